"""The plain JSON API beside the Gradio apps, for programs (kiosks, other front ends, scripts):
POST /api/search and POST /api/feedback.

The same Desk as the chat, so the same answer as `python -m chatbot ask --json`, the same log
and masking; Guard (web.py) applies the same body size and rate limits. Bodies are checked by
pydantic in strict mode: a wrong type is a 422 naming the field, never a 500 or a coerced value.
When every search worker is busy and the line is full, 503 with Retry-After (service.Pool).
The OpenAPI description is /api/openapi.json, and /api/docs a page made from it on the server:
FastAPI's own page loads its scripts from a CDN, which a desk on a closed network cannot reach.
"""

from __future__ import annotations

import html
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from chatbot import config, search
from chatbot.desk.service import Busy

RETRY_AFTER = "1"  # seconds: a search takes tens of milliseconds, a full line clears in well under one


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")  # "5" is not 5, true is not 1, no stray fields


class SearchRequest(_Strict):
    question: str = Field(description=f"the question, up to {search.MAX_QUERY_CHARS} characters",
                          examples=["起業したばかりで知財の専門家に相談したい"])
    top_k: int = Field(config.TOP_K, ge=1, le=50, description="how many programmes to return at most")
    context: str | None = Field(None, description="key of the programme the conversation is on, e.g. 1.(1)",
                                examples=["1.(1)"])


class FeedbackRequest(_Strict):
    question: str = Field(description="the question that was answered")
    key: str = Field("", description='the programme the vote is about ("": the answer found nothing)')
    helpful: bool = Field(description="true for 👍, false for 👎")


class Result(BaseModel):
    key: str = Field(description="the programme's key, S.(N)")
    title: str
    section: str
    text: str = Field(description="the report's passage, verbatim")
    urls: list[str]
    score: float
    subitem: str
    breadcrumb: str


class Answer(BaseModel):
    """Exactly what `python -m chatbot ask --json` prints."""

    query: str
    abstained: bool = Field(description='true exactly when decision is "none"')
    ambiguous: bool
    decision: Literal[search.DECISIONS]  # the engine's three
    results: list[Result]
    confidence: float
    followed_context: bool
    message: str | None = Field(None, description="why there is no result (an empty or over-long question)")
    error: str | None = Field(None, description="why the request could not be searched (an unknown context)")


class Feedback(BaseModel):
    question: str
    key: str
    helpful: bool | None
    recorded: bool = Field(description="the log has taken the vote")
    id: str | None = None
    error: str | None = None


class Problem(BaseModel):
    error: str = Field(description="what is wrong, in one line")
    detail: list[dict] | None = Field(None, description="for a 422: each field that is wrong")


def create(desk):
    """The API as a FastAPI app, mounted at /api by web.create."""
    import fastapi
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse

    api = fastapi.FastAPI(title="madoguchi API", version="1", docs_url=None, redoc_url=None,
                          description="Find the JPO support programme that fits a question (annual report, "
                                      "chapter 5). Answers quote the report verbatim with its URLs.")

    @api.exception_handler(RequestValidationError)
    async def invalid(request, exc):
        # pydantic's own list, minus the echo of what was sent and its documentation links
        detail = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors()]
        first = detail[0] if detail else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"] if p != "body") or "body"
        return JSONResponse({"error": f"{where}: {first['msg']}", "detail": detail}, status_code=422)

    busy = {503: {"model": Problem, "description": "every search worker is busy; retry after Retry-After seconds"}}
    invalid_body = {422: {"model": Problem, "description": "a field is missing or of the wrong type"}}

    @api.post("/search", response_model=Answer, responses={**invalid_body, **busy},
              summary="Search the programmes for a question")
    async def search_programmes(body: SearchRequest):
        """The answer `python -m chatbot ask --json` gives. A `context` that is not a programme key
        is a 422 whose body has that same shape, with `error`."""
        try:
            out = await desk.api_search_async(body.question, body.top_k, body.context or "")
        except Busy:
            return JSONResponse({"error": "the desk is busy; try again in a second"}, status_code=503,
                                headers={"retry-after": RETRY_AFTER})
        # The dict as it is: through response_model FastAPI would validate and copy it again.
        return JSONResponse(out, status_code=422 if out.get("error") else 200)

    @api.post("/feedback", response_model=Feedback, responses={**invalid_body, 503: {
              "model": Feedback, "description": "the log could not take the vote (it says why)"}},
              summary="Record a 👍/👎 on an answer")
    def feedback(body: FeedbackRequest):
        out = desk.api_feedback(body.question, body.key, body.helpful)
        # Not recorded: a vote the log was asked to take (it has an "id") failed there; else it was refused.
        return JSONResponse(out, status_code=200 if out["recorded"] else 503 if "id" in out else 422)

    @api.get("/docs", include_in_schema=False)
    def docs():
        return HTMLResponse(page(api.openapi()))

    return api


def page(spec: dict) -> str:
    """The OpenAPI description as a plain HTML page: each route, its request fields, its replies."""
    schemas = spec.get("components", {}).get("schemas", {})

    def ref(node: dict) -> str:
        return node.get("$ref", "").rsplit("/", 1)[-1]

    def kind(node: dict) -> str:
        if "$ref" in node:
            return ref(node)
        if "anyOf" in node:
            return " | ".join(kind(n) for n in node["anyOf"])
        if node.get("type") == "array":
            return f"list of {kind(node.get('items', {}))}"
        if "enum" in node or "const" in node:
            return " | ".join(f'"{v}"' for v in node.get("enum", [node.get("const")]))
        return node.get("type", "any")

    def fields(name: str) -> str:
        schema = schemas.get(name, {})
        required = set(schema.get("required", []))
        rows = "".join(
            f"<tr><td><code>{html.escape(f)}</code></td><td>{html.escape(kind(p))}</td>"
            f"<td>{'required' if f in required else html.escape('default ' + repr(p.get('default')))}</td>"
            f"<td>{html.escape(p.get('description', ''))}</td></tr>"
            for f, p in schema.get("properties", {}).items())
        return f"<table><tr><th>field</th><th>type</th><th></th><th></th></tr>{rows}</table>"

    parts = []
    for path, methods in spec.get("paths", {}).items():
        for method, op in methods.items():
            body = ref(op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {}))
            parts.append(f"<h2><code>{method.upper()} /api{html.escape(path)}</code>: "
                         f"{html.escape(op.get('summary', ''))}</h2><p>{html.escape(op.get('description', ''))}</p>")
            if body:
                parts.append(f"<h3>request: JSON {html.escape(body)}</h3>{fields(body)}")
            for status, reply in op.get("responses", {}).items():
                model = ref(reply.get("content", {}).get("application/json", {}).get("schema", {}))
                parts.append(f"<h3>{html.escape(status)}: {html.escape(reply.get('description', ''))}</h3>"
                             + (fields(model) if model in schemas and model != "HTTPValidationError" else ""))
    info = spec.get("info", {})
    return (f'<!doctype html><html lang="en"><meta charset="utf-8"><title>{html.escape(info.get("title", ""))}</title>'
            '<style>body{font-family:sans-serif;max-width:60em;margin:2em auto;line-height:1.5;padding:0 1em}'
            'table{border-collapse:collapse}td,th{border:1px solid #999;padding:.2em .5em;text-align:left}</style>'
            f'<h1>{html.escape(info.get("title", ""))}</h1><p>{html.escape(info.get("description", ""))}</p>'
            '<p>Machine-readable: <a href="/api/openapi.json">/api/openapi.json</a> (OpenAPI). '
            'Example: <code>curl -s -H "Content-Type: application/json" -d \'{"question": "特許料の減免"}\' '
            'http://127.0.0.1:7860/api/search</code></p>' + "".join(parts) + "</html>")
