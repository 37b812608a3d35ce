"""The desk over HTTP: one FastAPI app under uvicorn, the visitor app at /, the staff console
at /staff behind a login, the JSON API at /api (chatbot/desk/api.py), and the rules every request
meets on the way in.

- Two Gradio apps, not one with a hidden tab: the visitor app has no staff event under any name
  or fn_index, and every route of the console (/staff/gradio_api/…, its queue, its config)
  answers 401 without a login. With no staff account in the log's database the console is not
  mounted at all; /staff says how to create one.
- Logins are checked against chatbot.staff.Accounts (scrypt, lockout); Gradio keeps the session
  token in an HttpOnly cookie, made SameSite=Strict here.
- Every reply carries CSP frame-ancestors 'none', X-Frame-Options DENY, nosniff and no referrer;
  CORS is answered for no other origin (FastAPI's CORSMiddleware with none allowed, which also
  keeps Gradio's own, which reflects localhost origins, out); uploads are refused (no component
  takes a file), a request body over MAX_BODY is refused with 413 and one of unknown length with
  411; POSTs beyond the rate
  limit of a client address get 429 with Retry-After.
"""

from __future__ import annotations

import html
import time

MAX_BODY = 64 * 1024  # bytes: a question is at most 1,000 characters
HEADERS = [
    (b"content-security-policy", b"frame-ancestors 'none'; base-uri 'self'; form-action 'self'; object-src 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]
NO_UPLOADS = ("/gradio_api/upload",)  # under / and under /staff


def create(visitor, console, desk, *, theme: str, css: str, rate: float = 0):
    """The ASGI app. `console` is the staff Blocks, or None when no account exists; `rate`: POST
    requests a second per client address (0: no limit)."""
    from chatbot.desk import api

    import fastapi
    import gradio as gr
    from fastapi.middleware.cors import CORSMiddleware
    from fastapi.responses import HTMLResponse, RedirectResponse

    root = fastapi.FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    root.add_middleware(CORSMiddleware, allow_origins=[], allow_credentials=False)
    accounts = desk.accounts
    root.mount("/api", api.create(desk))  # before "/": the visitor app would take every path
    common = dict(ssr_mode=False, pwa=False, mcp_server=False, enable_monitoring=False, run_history=False,
                  show_error=False, theme=theme, css=css, max_file_size="4kb")
    if console is not None:
        root.add_api_route("/staff", lambda: RedirectResponse("/staff/", status_code=307), include_in_schema=False)

        async def login(name: str, password: str) -> bool:
            import anyio

            try:  # scrypt takes ~0.1 s: off the event loop, which serves every visitor
                return await anyio.to_thread.run_sync(accounts.login, name, password)
            except Exception:  # the database is away: nobody gets in, and the desk goes on
                return False

        gr.mount_gradio_app(root, console, "/staff", footer_links=[], auth=login,
                            auth_message="職員用コンソール: 職員のアカウントでログインしてください。", **common)
    else:
        def console_off(rest: str = ""):
            return HTMLResponse(CONSOLE_OFF, status_code=503)

        for path in ("/staff", "/staff/{rest:path}"):  # every method: nothing under /staff reaches the visitor app
            root.add_api_route(path, console_off, methods=["GET", "POST", "PUT", "DELETE"], include_in_schema=False)
    gr.mount_gradio_app(root, visitor, "/", footer_links=["api"], **common)
    from gradio.route_utils import FnIndexInferError
    from starlette.routing import Mount

    sessions = None
    for route in root.routes:  # an API name the app does not have is a 404, not a 500 with a traceback
        if isinstance(route, Mount):
            route.app.add_exception_handler(FnIndexInferError, _no_such_endpoint)
            if route.path == "/staff":
                sessions = Sessions(route.app, accounts)
    return Guard(root, rate, sessions)


class Sessions:
    """Gradio keeps each login's token in memory, with no end: a removed or locked account
    would stay logged in until the desk restarts. Each console request checks its user's account
    again (at most every RECHECK seconds per user) and drops the tokens of one that is gone."""

    RECHECK = 1.0  # seconds

    def __init__(self, app, accounts):
        self.app, self.accounts = app, accounts
        self.checked: dict[str, float] = {}

    def allow(self, headers: dict) -> bool:
        cookies = headers.get(b"cookie", b"").decode("latin-1")
        tokens = [v for k, v in (p.strip().split("=", 1) for p in cookies.split(";") if "=" in p)
                  if k.startswith("access-token")]
        users = {self.app.tokens[t] for t in tokens if t in self.app.tokens}
        now = time.monotonic()
        for user in users:
            if now - self.checked.get(user, -self.RECHECK) < self.RECHECK:
                continue
            try:
                valid = self.accounts.valid(user)
            except Exception:  # noqa: BLE001 - the database away: who logged in stays in
                valid = True
            if not valid:
                for token in [t for t, u in self.app.tokens.items() if u == user]:
                    del self.app.tokens[token]
                self.checked.pop(user, None)
                return False
            self.checked[user] = now
        return True


async def _no_such_endpoint(request, exc):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": "no such endpoint"}, status_code=404)


CONSOLE_OFF = f"""<!doctype html><html lang="ja"><meta charset="utf-8"><title>職員用コンソール</title>
<body style="font-family: sans-serif; max-width: 40em; margin: 3em auto; line-height: 1.6">
<h1>職員用コンソールは無効です</h1>
<p>職員のアカウントがまだありません。デスクのサーバーで次を実行し、デスクを再起動してください。</p>
<pre>{html.escape("python -m chatbot staff add <名前>")}</pre>
<p><a href="/">相談窓口へ戻る</a></p></body></html>"""


class RateLimit:
    """A token bucket per client address: `rate` requests a second, bursts of twice that. The
    address is the peer's, or, when the peer is this machine (nginx in front), the last one nginx
    added to X-Forwarded-For. Buckets of clients idle for a minute are forgotten."""

    def __init__(self, rate: float):
        self.rate, self.burst = rate, 2 * rate
        self.buckets: dict[str, tuple[float, float]] = {}  # address → (tokens, last time)

    def allow(self, address: str) -> bool:
        now = time.monotonic()
        tokens, last = self.buckets.get(address, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if len(self.buckets) > 10_000:  # many addresses: drop the idle ones
            self.buckets = {a: b for a, b in self.buckets.items() if now - b[1] < 60}
        if tokens < 1:
            self.buckets[address] = (tokens, now)
            return False
        self.buckets[address] = (tokens - 1, now)
        return True


def _client(scope, headers: dict) -> str:
    peer = (scope.get("client") or ("", 0))[0]
    if peer in ("127.0.0.1", "::1"):
        forwarded = headers.get(b"x-forwarded-for", b"").decode("latin-1")
        if forwarded.strip():
            return forwarded.split(",")[-1].strip()
    return peer


class Guard:
    """ASGI middleware: security headers and SameSite=Strict cookies on every reply, no uploads,
    bounded request bodies, and a request rate per client on what runs the engine or a login
    (POSTs: the API, the queue, /staff/login)."""

    def __init__(self, app, rate: float = 0, sessions: Sessions | None = None):
        self.app = app
        self.limit = RateLimit(rate) if rate > 0 else None
        self.sessions = sessions

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, method = scope.get("path", ""), scope.get("method")
        headers = dict(scope.get("headers") or [])
        multipart = headers.get(b"content-type", b"").startswith(b"multipart/") and not path.endswith("/login")
        if multipart or path.rstrip("/").endswith(NO_UPLOADS):  # /upload, /process_recording, any file
            return await _refuse(send, 403, "uploads are off: the desk takes no files")
        if self.limit and method == "POST" and not self.limit.allow(_client(scope, headers)):
            return await _refuse(send, 429, "too many requests from this address; try again in a second",
                                 [(b"retry-after", b"1")])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
            return await _refuse(send, 413, f"request body over {MAX_BODY} bytes")
        # A chunked body's size is known only once read (uvicorn holds a declared length to its word).
        if length is None and (method == "POST" or b"transfer-encoding" in headers):
            return await _refuse(send, 411, "a request with a body needs a Content-Length")
        if self.sessions and path.startswith("/staff/") and not self.sessions.allow(headers):
            return await _refuse(send, 401, "the account of this login was removed or locked")

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                extra = [(k, _strict(v) if k.lower() == b"set-cookie" else v)
                         for k, v in message.get("headers", []) if k.lower() not in _OURS]
                message = {**message, "headers": extra + HEADERS}
            await send(message)

        await self.app(scope, receive, send_with_headers)


_OURS = {name for name, _ in HEADERS}


def _strict(cookie: bytes) -> bytes:
    """Gradio sets its session cookie SameSite=none (and a copy with no SameSite): Strict, so no
    other site's page can send a request that carries the staff's login."""
    parts = [p for p in cookie.split(b";") if not p.strip().lower().startswith(b"samesite")]
    return b";".join(parts) + b"; SameSite=Strict"


async def _refuse(send, status: int, reason: str, extra: list | None = None) -> None:
    body = ('{"error": "%s"}' % reason).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *HEADERS, *(extra or [])]})
    await send({"type": "http.response.body", "body": body})
