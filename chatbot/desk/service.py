"""The desk's one way into the engine: search, log, and look programmes up.

The UI and the API endpoint both go through `Desk.ask`, so what the chat shows, what /search
returns and what gets logged cannot drift apart.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from chatbot import search as search_mod
from chatbot import staff, text
from chatbot.errors import QueryError


class Desk:
    def __init__(self, searcher, programmes, store):
        self.searcher = searcher
        self.store = store
        self.accounts = staff.Accounts(store.backend)  # the console's logins, in the log's database
        self.programmes = {p.key: p for p in programmes}
        self.sections: dict[str, list] = {}
        for p in programmes:
            self.sections.setdefault(p.section_title, []).append(p)
        # URL → link title, so the chat shows 「J-PlatPat」 rather than a bare address.
        self.link_titles = {link.url: link.title for p in programmes for link in p.links}
        # MeCab's tagger is not documented as thread-safe and a search takes milliseconds:
        # Gradio's worker threads take turns here.
        self._lock = threading.Lock()

    def ask(self, question: str, *, top_k: int = 5, context: str = "", audience: str = "",
            channel: str = "visitor", log: bool = True) -> tuple[dict, float]:
        """(Answer.to_json(), milliseconds). Raises QueryError for a bad context or top_k."""
        started = time.perf_counter()
        # Issue 8: a lone surrogate (JSON "\ud800" sent to the API) cannot be encoded as UTF-8: it
        # made the log's INSERT and the JSON reply raise, so the caller got no answer at all.
        question = text.scrub(question or "")
        with self._lock:
            answer = self.searcher.search(question, top_k=top_k, context=context or None,
                                          audience=audience or None)
        out = plain(answer.to_json())
        elapsed = (time.perf_counter() - started) * 1000
        if log and not out.get("message"):  # empty or over-long input is not a question to count
            self.store.log_question(channel, question, out, context=context, audience=audience,
                                    elapsed_ms=round(elapsed, 1))
        return out, elapsed

    def api_search(self, question: str, top_k: int = 5, context: str = "") -> dict:
        """The pinned /search endpoint: exactly `python -m chatbot ask --json`. Arguments of the
        wrong JSON type are an error answer, never coerced (2.7 is not 2, true is not 1)."""
        shown = text.scrub(question[:search_mod.MAX_QUERY_CHARS]) if isinstance(question, str) else ""
        try:
            if not isinstance(question, str):
                raise QueryError(f"question must be a string, got {type(question).__name__}")
            if top_k is None:
                top_k = 5
            if isinstance(top_k, bool) or not isinstance(top_k, int):
                raise QueryError(f"top_k must be an integer between 1 and 50, got {_brief(top_k)}")
            if context is not None and not isinstance(context, str):
                raise QueryError(f"context must be a programme key (a string), got {type(context).__name__}")
            return self.ask(question, top_k=top_k, context=(context or "").strip(), channel="api")[0]
        except QueryError as e:  # the same shape the CLI prints for a question it cannot search
            return {"query": shown, "abstained": True, "ambiguous": False, "decision": "none", "results": [],
                    "error": str(e)}

    def api_feedback(self, question: str, key: str = "", helpful: bool = True) -> dict:
        """The pinned /feedback endpoint, for kiosks and other front ends: a 👍/👎 on the answer to
        `question` about programme `key` ("" = the answer found nothing). `recorded` is the log's
        acknowledgement (see chatbot.store.log for what it guarantees)."""
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
        uid = self.store.log_feedback("api", question, key, helpful)
        return {**out, "recorded": bool(uid), "id": uid}

    def correct(self, question: str, key: str, staff: str) -> str:
        """「正しい施策はこれ」 from the console: the question goes into the question bank under `key`
        (answered by it from the next search on) and the vote into the log, both with the staff name."""
        from chatbot import bank

        path = self.searcher.bank_file
        if path is None:
            return "⚠️ 質問バンクが設定されていません（MADOGUCHI_BANK）。"
        try:
            done = bank.add(path, [{"key": key, "question": question}], set(self.programmes), source="console", by=staff)
        except (bank.BankError, OSError) as e:
            return f"⚠️ 登録できませんでした: {e}"
        self.store.log_feedback("staff", question, key, True, staff=staff)
        verb = "付け替えました" if done.get("relabelled") else "登録しました" if done.get("added") else "登録済みです"
        return f"質問バンクに{verb}（{key}）。次の検索から使われます。"

    def ranking(self, question: str, top_k: int = 10) -> list[dict]:
        """The first `top_k` programmes by fused score, also when the search abstains (staff view)."""
        clean = text.normalise(question)
        if not clean or len(clean) > search_mod.MAX_QUERY_CHARS:
            return []
        with self._lock:
            ranking = self.searcher.rank(clean)
        rows = []
        for i in ranking.order[:top_k]:
            p = self.searcher.index.passages[int(ranking.best[i])]
            rows.append({"key": p.key, "title": p.title, "breadcrumb": p.breadcrumb, "text": p.text,
                         "urls": list(p.urls), "score": round(float(ranking.fused[i]), 4)})
        return rows


def _brief(value) -> str:
    """A wrong argument, named in an error without echoing a megabyte of it."""
    shown = repr(value)
    return shown if len(shown) <= 40 else f"{shown[:40]}… ({type(value).__name__})"


def plain(value):
    """JSON-native copy: the engine may hand back numpy scalars (a np.bool_ flag), which Gradio
    would serialise as the string "False"."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value.item() if isinstance(value, np.generic) else value
