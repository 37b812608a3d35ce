"""The desk's one way into the engine: search, log, and look programmes up.

The chat, the console and the API all go through `Desk` (questions through `_search`, votes
through `feedback`), so what the chat shows, what /search returns and what gets logged cannot
drift apart, and the UI modules only lay out and render.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

from chatbot import search as search_mod
from chatbot import config, privacy, staff, text
from chatbot.errors import QueryError


class Busy(Exception):
    """Every search worker is busy and the line for them is full: come back in a second."""


class Pool:
    """Where the desk's searches run: `workers` threads, each searching one question with one
    ONNX Runtime thread (bench/http_load.py measures this against one search at a time with ONNX
    on every core). A caller of the JSON API first takes a place():
    at most `workers + waiting` at once, beyond that Busy at once rather than a wait with no
    end. The chat and the console wait in Gradio's own bounded queue instead."""

    def __init__(self, workers: int, waiting: int):
        self.workers, self.limit = workers, workers + waiting
        self._threads = ThreadPoolExecutor(workers, thread_name_prefix="madoguchi-search")
        self._placed = 0
        self._lock = threading.Lock()

    @contextmanager
    def place(self):
        with self._lock:
            if self._placed >= self.limit:
                raise Busy()
            self._placed += 1
        try:
            yield
        finally:
            with self._lock:
                self._placed -= 1

    def submit(self, fn, *args, **kwargs) -> Future:
        return self._threads.submit(fn, *args, **kwargs)

    def run(self, fn, *args, **kwargs):
        return self.submit(fn, *args, **kwargs).result()

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)


class Desk:
    """The boundary of the desk: every question and vote from the chat, the console and the API
    comes in here, is checked and scrubbed once (a lone surrogate, U+D800 sent as JSON, cannot be
    encoded: it broke the log's INSERT and the reply, issue 8), searched, and logged."""

    def __init__(self, searcher, programmes, store, *, workers: int = 1, waiting: int = 0):
        self.searcher = searcher
        self.pool = Pool(workers, waiting)
        self.store = store
        self.accounts = staff.Accounts(store.backend)  # the console's logins, in the log's database
        self.programmes = {p.key: p for p in programmes}
        self.sections: dict[str, list] = {}
        for p in programmes:
            self.sections.setdefault(p.section_title, []).append(p)
        # URL → link title, so the chat shows 「J-PlatPat」 rather than a bare address.
        self.link_titles = {link.url: link.title for p in programmes for link in p.links}

    # -- questions ----------------------------------------------------------------------------

    def ask(self, question: str, *, top_k: int = config.TOP_K, context: str = "", audience: str = "",
            channel: str = "visitor") -> tuple[dict, float]:
        """(Answer.to_json(), milliseconds). Raises QueryError for a bad context or top_k."""
        _, out, elapsed = self._search(question, top_k=top_k, context=context, audience=audience, channel=channel)
        return out, elapsed

    def staff_search(self, question: str, top_k: int = 10) -> tuple[dict, list[dict], float]:
        """The console's search: the answer, and the first `top_k` programmes with their scores
        also when it abstains, from one ranking."""
        answer, out, elapsed = self._search(question, top_k=top_k, channel="staff")
        return out, [r.to_json() for r in self.searcher.ranked(answer, top_k)], elapsed

    def api_search(self, question: str, top_k: int = config.TOP_K, context: str = "") -> dict:
        """The pinned Gradio /search endpoint: exactly `python -m chatbot ask --json`. Arguments of
        the wrong JSON type are an error answer, never coerced (2.7 is not 2, true is not 1)."""
        try:
            top_k, context = _checked(question, top_k, context)
            return self._search(question, top_k=top_k, context=context, channel="api")[1]
        except QueryError as e:
            return _refused(question, e)

    async def api_search_async(self, question: str, top_k: int = config.TOP_K, context: str = "") -> dict:
        """POST /api/search (chatbot/desk/api.py): the same answer, asked from the event loop. The
        place in line is taken there, so a full desk raises Busy without tying up a thread."""
        try:
            top_k, context = _checked(question, top_k, context)
            with self.pool.place():
                job = self.pool.submit(self._search_here, question, top_k=top_k, context=context, channel="api",
                                       started=time.perf_counter())
                return (await asyncio.wrap_future(job))[1]
        except QueryError as e:
            return _refused(question, e)

    def _search(self, question: str, *, top_k: int, channel: str, context: str = "", audience: str = ""):
        return self.pool.run(self._search_here, question, top_k=top_k, channel=channel, context=context,
                             audience=audience, started=time.perf_counter())

    def _search_here(self, question: str, *, top_k: int, channel: str, context: str = "", audience: str = "",
                     started: float):
        """In a worker of the pool: search, log. `started`: when the caller asked (the wait counts)."""
        question = text.scrub(question or "")
        answer = self.searcher.search(question, top_k=top_k, context=context or None, audience=audience or None)
        elapsed = (time.perf_counter() - started) * 1000
        out = answer.to_json()
        if not answer.message:  # empty or over-long input is not a question to count
            self.store.log_question(channel, question, out, context=context, audience=audience,
                                    elapsed_ms=round(elapsed, 1))
        return answer, out, elapsed

    # -- votes and corrections -------------------------------------------------------------------

    def feedback(self, channel: str, question, key="", helpful=True, staff: str = "") -> dict:
        """A 👍/👎 on the answer to `question` about programme `key` ("" = the answer found
        nothing), from the chat, the console or the API alike. `recorded` is the log's
        acknowledgement (see chatbot.store.log for what it guarantees); `error` says why not."""
        out = {"question": question if isinstance(question, str) else "", "key": key if isinstance(key, str) else "",
               "helpful": helpful, "recorded": False}
        if not isinstance(question, str) or not isinstance(key or "", str):
            return {**out, "error": "question and key must be strings"}
        question, key = text.scrub(question).strip(), (key or "").strip()
        out.update(question=question[:search_mod.MAX_QUERY_CHARS], key=key[:20])
        if not question or len(question) > search_mod.MAX_QUERY_CHARS:
            return {**out, "error": f"question must be 1 to {search_mod.MAX_QUERY_CHARS} characters"}
        if key and key not in self.programmes:
            return {**out, "error": f"unknown programme key {key[:20]!r} (see python -m chatbot list)"}
        if not isinstance(helpful, bool):
            return {**out, "helpful": None, "error": f"helpful must be true or false, got {_brief(helpful)}"}
        uid = self.store.log_feedback(channel, question, key, helpful, staff=staff)
        out.update(recorded=bool(uid), id=uid)
        if not uid:
            out["error"] = self.store.last_error or "the log did not take the vote"
        return out

    def api_feedback(self, question: str, key: str = "", helpful: bool = True) -> dict:
        """The pinned /feedback endpoint, for kiosks and other front ends (see `feedback`)."""
        return self.feedback("api", question, key, helpful)

    def correct(self, question: str, key: str, staff: str) -> str:
        """「正しい施策はこれ」 from the console: the question goes into the question bank under `key`
        (answered by it from the next search on) and the vote into the log, both with the staff name."""
        from chatbot import bank

        path = self.searcher.bank_file
        if path is None:
            return "⚠️ 質問バンクが設定されていません（MADOGUCHI_BANK）。"
        try:
            done = bank.add(path, [{"key": key, "question": privacy.mask(question)}], set(self.programmes),
                            source="console", by=staff)  # the bank is kept for good: no personal data in it
        except (bank.BankError, OSError) as e:
            return f"⚠️ 登録できませんでした: {e}"
        self.feedback("staff", question, key, True, staff=staff)
        verb = "付け替えました" if done.get("relabelled") else "登録しました" if done.get("added") else "登録済みです"
        return f"質問バンクに{verb}（{key}）。次の検索から使われます。"

    # -- the log, for the console -----------------------------------------------------------------

    def log_problems(self) -> list[str]:
        return [p for p in (self.store.spool_error, self.store.last_error) if p]

    def stats(self) -> dict:
        return self.store.stats()


def _checked(question, top_k, context) -> tuple[int, str]:
    """(top_k, context) of an API call, or QueryError for an argument of the wrong JSON type."""
    if not isinstance(question, str):
        raise QueryError(f"question must be a string, got {type(question).__name__}")
    if top_k is None:
        top_k = config.TOP_K
    if isinstance(top_k, bool) or not isinstance(top_k, int):
        raise QueryError(f"top_k must be an integer between 1 and 50, got {_brief(top_k)}")
    if context is not None and not isinstance(context, str):
        raise QueryError(f"context must be a programme key (a string), got {type(context).__name__}")
    return top_k, (context or "").strip()


def _refused(question, error: QueryError) -> dict:
    """The same shape the CLI prints for a question it cannot search, with `error`."""
    return search_mod.Answer.refused(question if isinstance(question, str) else "", str(error)).to_json()


def _brief(value) -> str:
    """A wrong argument, named in an error without echoing a megabyte of it."""
    shown = repr(value)
    return shown if len(shown) <= 40 else f"{shown[:40]}… ({type(value).__name__})"
