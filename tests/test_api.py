"""The JSON API (/api/search, /api/feedback) of a real desk, and the search pool behind it.

Over HTTP with httpx against the session desks (tests/conftest.py: once per log backend); the
pool and the parallel engine in process, on the real model and index.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from logdb import eventually, query

REPO = Path(__file__).resolve().parent.parent
ASK_KEYS = {"query", "abstained", "ambiguous", "decision", "results", "confidence", "followed_context"}


@pytest.fixture(scope="module")
def http(desk):
    with httpx.Client(base_url=desk.url, timeout=30) as client:
        yield client


def test_search_is_the_ask_json(http, desk):
    """The same object as `python -m chatbot ask --json` for the same index (the key order too)."""
    question = "スタートアップで知財の専門家を派遣してほしい"
    r = http.post("/api/search", json={"question": question, "top_k": 3})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    env = {**os.environ, "MADOGUCHI_INDEX": str(desk.index_dir)}
    cli = subprocess.run([sys.executable, "-m", "chatbot", "ask", question, "--top-k", "3", "--json"],
                         cwd=REPO, env=env, capture_output=True, text=True, check=True)
    expected, got = json.loads(cli.stdout), r.json()
    assert set(got) == ASK_KEYS and list(got) == list(expected)
    assert [x["key"] for x in got["results"]] == [x["key"] for x in expected["results"]]
    assert got["decision"] == expected["decision"] and len(got["results"]) == 3
    for a, b in zip(got["results"], expected["results"]):
        assert {k: v for k, v in a.items() if k != "score"} == {k: v for k, v in b.items() if k != "score"}
        assert a["score"] == pytest.approx(b["score"], abs=1e-3)  # one ONNX thread here, all cores in the CLI


def test_search_follows_the_context_and_is_logged_as_api(http, desk):
    out = http.post("/api/search", json={"question": "それの料金は？", "context": "6.(1)"}).json()
    assert out["followed_context"] and out["results"][0]["key"] == "6.(1)"
    expected = ("api", "それの料金は？", "6.(1)")
    found = eventually(lambda: expected in query(desk.log_url, "SELECT channel, question, context FROM questions"))
    assert found


@pytest.mark.parametrize("body, field", [
    ({"question": "特許", "top_k": "3"}, "top_k"),  # a string is not a number
    ({"question": "特許", "top_k": True}, "top_k"),  # nor is true
    ({"question": "特許", "top_k": 2.5}, "top_k"),
    ({"question": "特許", "top_k": 0}, "top_k"),
    ({"question": "特許", "top_k": 51}, "top_k"),
    ({"question": 12}, "question"),
    ({"question": None}, "question"),
    ({"top_k": 3}, "question"),
    ({"question": "特許", "context": ["1.(1)"]}, "context"),
    ({"question": "特許", "topk": 3}, "topk"),  # a misspelt field is not silently ignored
])
def test_a_wrong_body_is_a_422_naming_the_field(http, desk, body, field):
    since = len(desk.output)
    r = http.post("/api/search", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"].startswith(field) and r.json()["detail"]
    assert "Traceback" not in "\n".join(desk.output[since:])


def test_not_json_and_an_unknown_context_are_422(http):
    r = http.post("/api/search", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "error" in r.json()
    r = http.post("/api/search", json={"question": "料金は？", "context": "99.(1)"})
    assert r.status_code == 422 and set(ASK_KEYS) <= set(r.json()) and "99.(1)" in r.json()["error"]


def test_bad_questions_get_a_message_not_an_error(http):
    for question, words in [("", "入力"), ("　\u200b\x07", "入力"), ("あ" * 1001, "長すぎ")]:
        r = http.post("/api/search", json={"question": question})
        assert r.status_code == 200 and words in r.json()["message"] and r.json()["results"] == []
    r = http.post("/api/search", json={"question": "🙂 <script>alert(1)</script> 特許の相談"})
    assert r.status_code == 200 and r.json()["query"] == "🙂 <script>alert(1)</script> 特許の相談"


def test_a_body_over_the_limit_is_413(http):
    r = http.post("/api/search", content=json.dumps({"question": "あ" * 30_000}).encode(),
                  headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_feedback_is_recorded_and_a_bad_key_is_422(http, desk):
    r = http.post("/api/feedback", json={"question": "電話 090-1234-5678 で特許の相談", "key": "8.(4)", "helpful": False})
    assert r.status_code == 200 and r.json()["recorded"] and r.json()["id"]
    rows = eventually(lambda: query(desk.log_url, "SELECT channel, question, key, helpful FROM feedback "
                                    "WHERE key = '8.(4)' AND channel = 'api'"))
    assert rows and "090-1234-5678" not in rows[-1][1] and rows[-1][3] == 0  # masked like the chat's
    r = http.post("/api/feedback", json={"question": "特許", "key": "77.(7)", "helpful": True})
    assert r.status_code == 422 and not r.json()["recorded"] and "77.(7)" in r.json()["error"]
    assert http.post("/api/feedback", json={"question": "特許", "helpful": "yes"}).status_code == 422


def test_the_description_and_its_page(http):
    spec = http.get("/api/openapi.json").json()
    assert set(spec["paths"]) == {"/search", "/feedback"}
    fields = spec["components"]["schemas"]["SearchRequest"]["properties"]
    assert set(fields) == {"question", "top_k", "context"}
    page = http.get("/api/docs")
    assert page.status_code == 200 and "<script" not in page.text  # nothing loaded from elsewhere
    assert "POST /api/search" in page.text and "top_k" in page.text and "503" in page.text
    answer = spec["components"]["schemas"]["Answer"]["properties"]
    assert ASK_KEYS <= set(answer)  # the documented answer is the one given


# -- the pool and the parallel engine (in process) ----------------------------------------------------


def test_pool_refuses_at_once_when_the_line_is_full():
    from chatbot.desk.service import Busy, Pool

    pool, release = Pool(1, 1), threading.Event()
    with pool.place():
        held = pool.submit(release.wait, 10)  # the one worker, busy
        with pool.place():  # the one place in line
            with pytest.raises(Busy):
                with pool.place():
                    pass
            chat = pool.submit(lambda: "chat")  # the chat is not counted: it waits in Gradio's queue
            release.set()
            assert held.result(10) and chat.result(10) == "chat"
    with pool.place():  # free again
        assert pool.run(lambda: "answered") == "answered"
    pool.close()


def test_parallel_searches_answer_as_serial_ones(lean_index):
    """Four threads at once over one Searcher (one MeCab tagger behind its lock, one ONNX session)
    give exactly the answers of one thread."""
    from chatbot import embed, index, search

    encoder = embed.load_encoder(threads=1)
    searcher = search.Searcher(index.load(lean_index, model_id=encoder.model_id), encoder, use_bank=False)
    questions = [json.loads(line)["query"] for line in (REPO / "eval" / "queries.jsonl").read_text().splitlines()][:60]

    def answer(q):
        out = searcher.search(q).to_json()
        return out["decision"], [r["key"] for r in out["results"]], out["confidence"]

    serial = [answer(q) for q in questions]
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(answer, questions * 2)) == serial * 2


def test_a_full_desk_answers_503_with_retry_after_at_once(lean_index, tmp_path):
    """One worker and no line: of many questions sent at once, those that find no place are refused
    with 503 and Retry-After straight away, and every other one is answered."""
    import asyncio

    from desk_probe import DeskProcess

    proc = DeskProcess(lean_index, tmp_path / "data", env={"MADOGUCHI_WORKERS": "1", "MADOGUCHI_QUEUE": "0",
                                                          "MADOGUCHI_RATE_LIMIT": "0"})

    async def burst():
        async with httpx.AsyncClient(base_url=proc.url, timeout=30) as client:
            return await asyncio.gather(*(client.post("/api/search", json={"question": f"J-PlatPatで特許を検索したい{i}"})
                                          for i in range(24)))

    try:
        replies = asyncio.run(burst())
    finally:
        proc.stop()
    refused = [r for r in replies if r.status_code == 503]
    answered = [r for r in replies if r.status_code == 200]
    assert refused and answered and len(refused) + len(answered) == len(replies)
    assert all(r.headers["retry-after"] == "1" and "busy" in r.json()["error"] for r in refused)
    assert max(r.elapsed.total_seconds() for r in refused) < 1.0  # "at once": well within an answer's bound
    assert all(ASK_KEYS <= set(r.json()) and r.json()["results"][0]["key"] == "6.(1)" for r in answered)
