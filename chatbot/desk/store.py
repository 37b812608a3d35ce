"""The desk's log: questions (for the no-match list and daily counts) and 👍/👎 feedback.

`Store` is the interface the desk uses; `SQLiteStore` keeps it in <data-dir>/madoguchi.sqlite3.
A PostgreSQL store implements the same three methods over the same two tables (the SQL below is
plain enough to carry over with `%s` placeholders).

Logging must never block or break an answer: the database is opened lazily with a short lock
timeout, and sqlite3 errors are caught, printed on stderr and kept in `last_error` for the staff
view — the answer is shown either way.
"""

from __future__ import annotations

import sqlite3
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

FILENAME = "madoguchi.sqlite3"
SCHEMA = """
CREATE TABLE IF NOT EXISTS questions (
    id INTEGER PRIMARY KEY,
    at TEXT NOT NULL,            -- UTC, ISO 8601
    channel TEXT NOT NULL,       -- visitor / staff / api
    question TEXT NOT NULL,
    context TEXT,                -- programme key the conversation was on
    audience TEXT,
    abstained INTEGER NOT NULL,
    ambiguous INTEGER NOT NULL,
    top_key TEXT,
    elapsed_ms REAL
);
CREATE INDEX IF NOT EXISTS questions_at ON questions(at);
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    channel TEXT NOT NULL,
    question TEXT NOT NULL,
    key TEXT,                    -- the programme the feedback is about ('' for a no-match answer)
    helpful INTEGER NOT NULL     -- 1 = 👍, 0 = 👎
);
"""


class Store(Protocol):
    last_error: str

    def log_question(self, channel: str, question: str, answer: dict, *, context: str = "",
                     audience: str = "", elapsed_ms: float | None = None) -> None: ...

    def log_feedback(self, channel: str, question: str, key: str, helpful: bool) -> None: ...

    def stats(self, days: int = 30, top: int = 10) -> dict: ...


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class SQLiteStore:
    LOCK_TIMEOUT = 0.5  # seconds: a locked database costs an entry, never a slow answer

    def __init__(self, data_dir: Path):
        self.path = Path(data_dir) / FILENAME
        self.last_error = ""
        self._ready = False
        self._lock = threading.Lock()  # creation only
        # Issue 8: one writer path. Left to SQLite's own locking, 32 threads writing at once lost
        # ~10% of their rows to "database is locked" (LOCK_TIMEOUT 0.5 s, busy handler unfair).
        # The desk's threads now queue here, so SQLite's lock is only contended by other processes.
        self._write_lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        if not self._ready:
            with self._lock:
                if not self._ready:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    with sqlite3.connect(self.path, timeout=self.LOCK_TIMEOUT) as db:
                        db.execute("PRAGMA journal_mode=WAL")  # readers (stats) never wait for writers
                        db.executescript(SCHEMA)
                    self._ready = True
        # A connection per call: handlers run on Gradio's worker threads, and opening a local
        # SQLite file costs well under a millisecond.
        return sqlite3.connect(self.path, timeout=self.LOCK_TIMEOUT)

    def _write(self, sql: str, row: tuple) -> None:
        with self._write_lock:
            self._write_now(sql, row)

    def _write_now(self, sql: str, row: tuple) -> None:
        try:
            db = self._connect()
            try:
                with db:
                    db.execute(sql, row)
            finally:
                db.close()
        # ValueError (Issue 8): e.g. UnicodeEncodeError for text sqlite3 cannot bind; logging must
        # never break an answer, so it is reported like any other failed write.
        except (sqlite3.Error, OSError, ValueError) as e:
            self._failed(e)

    def _failed(self, e: Exception) -> None:
        self.last_error = f"{time.strftime('%H:%M:%S')} 記録できませんでした ({self.path}): {type(e).__name__}: {e}"
        print(f"madoguchi desk: {self.last_error}", file=sys.stderr, flush=True)

    def log_question(self, channel: str, question: str, answer: dict, *, context: str = "",
                     audience: str = "", elapsed_ms: float | None = None) -> None:
        """`answer` is Answer.to_json()."""
        results = answer.get("results") or []
        self._write(
            "INSERT INTO questions (at, channel, question, context, audience, abstained, ambiguous,"
            " top_key, elapsed_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (_now(), channel, question, context or None, audience or None, int(bool(answer.get("abstained"))),
             int(bool(answer.get("ambiguous"))), results[0]["key"] if results else None,
             elapsed_ms))

    def log_feedback(self, channel: str, question: str, key: str, helpful: bool) -> None:
        self._write("INSERT INTO feedback (at, channel, question, key, helpful) VALUES (?, ?, ?, ?, ?)",
                    (_now(), channel, question, key or "", int(bool(helpful))))

    def stats(self, days: int = 30, top: int = 10) -> dict:
        """Questions per day, the most frequent no-match questions, 👍/👎 counts."""
        empty = {"per_day": [], "no_match": [], "helpful": 0, "unhelpful": 0, "questions": 0}
        if not self.path.exists():
            return empty
        try:
            db = self._connect()
            try:
                per_day = db.execute(
                    "SELECT substr(at, 1, 10) AS day, count(*), sum(abstained) FROM questions"
                    " GROUP BY day ORDER BY day DESC LIMIT ?", (days,)).fetchall()
                no_match = db.execute(
                    "SELECT question, count(*) AS n, max(at) FROM questions WHERE abstained = 1"
                    " GROUP BY question ORDER BY n DESC, max(at) DESC LIMIT ?", (top,)).fetchall()
                helpful, unhelpful = db.execute(
                    "SELECT coalesce(sum(helpful), 0), coalesce(sum(1 - helpful), 0) FROM feedback").fetchone()
                total = db.execute("SELECT count(*) FROM questions").fetchone()[0]
            finally:
                db.close()
        except (sqlite3.Error, OSError) as e:
            self._failed(e)
            return empty
        return {"per_day": [(d, n, m) for d, n, m in reversed(per_day)],
                "no_match": [(q, n) for q, n, _ in no_match],
                "helpful": helpful, "unhelpful": unhelpful, "questions": total}
