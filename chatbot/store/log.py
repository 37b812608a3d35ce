"""The log the desk writes to: a spool file on local disk, drained into the database by one thread.

Every record is first appended to this desk's spool (<data-dir>/spool-<replica>.jsonl) and fsynced
(0.2 ms here); only then is it acknowledged (the answer goes out, the API says "recorded"). A writer
thread copies spooled records into the database in batches and empties the spool once all of it is
stored. So:
- an answer never waits for the database: a slow, locked or unreachable database delays records,
  not answers;
- while the database is down, records wait in the spool (on disk, not in memory) and the writer
  retries with back-off; the staff view and the console say so;
- a desk killed at any moment leaves its spool behind: it is written out when the desk starts again
  (or by `python -m chatbot db flush`). A record written twice is stored once (its uid is unique).
The guarantee: every acknowledged record reaches the database once the database is reachable and the
spool has been drained, unless the desk's own disk is lost. If the spool itself cannot be written
(unwritable data directory), records are kept in memory (up to MEMORY_LIMIT) and the staff view
warns that they would not survive a restart.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from chatbot import text
from chatbot.errors import StoreError
from chatbot.store.schema import Backend, Unavailable, empty_stats

BATCH = 500
RETRY_SECONDS = (0.5, 1, 2, 5, 10)  # back-off while the database is unavailable
MEMORY_LIMIT = 10_000


class Log:
    def __init__(self, backend: Backend, data_dir: Path, replica: str):
        self.backend = backend
        self.replica = replica
        name = re.sub(r"[^A-Za-z0-9._-]", "_", replica)[:80] or "desk"
        self.spool_path = Path(data_dir) / f"spool-{name}.jsonl"
        self.rejected_path = Path(data_dir) / f"rejected-{name}.jsonl"
        self.last_error = ""       # shown in the staff view; empty when all is well
        self.spool_error = ""
        self.down_since: float | None = None
        self.written = self.rejected = self.lost = 0
        self.schema: tuple[int, int] | None = None  # (version found, version now) after the first migration
        self._lock = threading.Condition()  # the spool, the memory list and the counters
        self._memory: list[dict] = []
        self._pending = 0   # acknowledged, not yet in the database
        self._offset = 0    # bytes of the spool already in the database
        self._size = 0
        self._spool = self._reader = None
        self._closing = False
        self._stop = threading.Event()  # wakes the writer from its back-off when the desk closes
        self._open_spool()
        self._thread = threading.Thread(target=self._run, name="madoguchi-log", daemon=True)
        self._thread.start()

    # -- what the desk calls -------------------------------------------------------------------

    def log_question(self, channel: str, question: str, answer: dict, *, context: str = "",
                     audience: str = "", elapsed_ms: float | None = None) -> str:
        """`answer` is Answer.to_json(). Returns the record's uid ("" if it could not be kept)."""
        results = answer.get("results") or []
        return self._record("question", channel=channel, question=question, context=context or None,
                            audience=audience or None, abstained=bool(answer.get("abstained")),
                            ambiguous=bool(answer.get("ambiguous")),
                            top_key=results[0]["key"] if results else None, elapsed_ms=elapsed_ms)

    def log_feedback(self, channel: str, question: str, key: str, helpful: bool) -> str:
        """`key` is the programme the vote is about ("" for an answer that found nothing)."""
        return self._record("feedback", channel=channel, question=question, key=key or "", helpful=bool(helpful))

    def stats(self, days: int = 30, top: int = 10) -> dict:
        """Questions per day (Japan time), the most frequent no-match questions, 👍/👎 counts and
        questions per desk, from the database: with PostgreSQL, every desk's visitors."""
        try:
            out = self.backend.stats(days, top)
        except Unavailable as e:
            out = {**empty_stats(), "error": f"{_clock()} 集計を読めません（{self.backend.label}）: {e}"}
        return {**out, **self.status()}

    def status(self) -> dict:
        with self._lock:
            pending, memory = self._pending, len(self._memory)
        return {"store": self.backend.label, "replica": self.replica, "pending": pending, "in_memory": memory,
                "written": self.written, "rejected": self.rejected, "lost": self.lost,
                "spool": str(self.spool_path), "last_error": self.last_error, "spool_error": self.spool_error,
                "schema": self.schema[1] if self.schema else None}

    def wait_ready(self, timeout: float = 5.0) -> bool:
        """Wait for the first migration (or its failure, in last_error); True if the schema is current."""
        deadline = time.monotonic() + timeout
        while self.schema is None and not self.last_error and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.schema is not None

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every acknowledged record is in the database (or the timeout passes)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(min(left, 0.2))
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Write what can be written within `timeout`; the rest stays in the spool for next time."""
        self.flush(timeout)
        with self._lock:
            self._closing = True
            self._lock.notify_all()
        self._stop.set()
        self._thread.join(timeout)
        with self._lock:
            for handle in (self._spool, self._reader):
                if handle is not None:
                    handle.close()
            self._spool = self._reader = None
        getattr(self.backend, "close", lambda: None)()

    # -- the spool -----------------------------------------------------------------------------

    def _open_spool(self) -> None:
        try:
            self.spool_path.parent.mkdir(parents=True, exist_ok=True)
            spool = open(self.spool_path, "ab")
        except OSError as e:
            self._spool_failed(e)
            return
        try:
            fcntl.flock(spool, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            spool.close()
            raise StoreError(f"another desk is running as replica {self.replica!r} with {self.spool_path}: "
                             "give each desk its own --replica name (or data directory)") from None
        size = spool.seek(0, os.SEEK_END)
        if size:  # left by a desk that stopped before writing it out: replay it
            with open(self.spool_path, "rb") as f:
                data = f.read()
            if not data.endswith(b"\n"):  # a write torn by a crash was never acknowledged; seal it off
                spool.write(b"\n")
                size += 1
            self._pending = data.count(b"\n") + (not data.endswith(b"\n"))
            print(f"madoguchi log: {self._pending} records left in {self.spool_path} will be written to "
                  f"{self.backend.label}", file=sys.stderr, flush=True)
        self._spool, self._reader, self._size = spool, open(self.spool_path, "rb"), size

    def _record(self, kind: str, **fields) -> str:
        for k, v in fields.items():
            if isinstance(v, str):  # a lone surrogate cannot be stored anywhere; NUL not in PostgreSQL
                fields[k] = text.scrub(v).replace("\x00", "\ufffd")
        record = {"uid": uuid.uuid4().hex, "kind": kind, "at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                  "replica": self.replica, **fields}
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            if self._spool is not None:
                try:
                    self._spool.write(line)
                    self._spool.flush()
                    os.fsync(self._spool.fileno())
                    self._size += len(line)
                    self._pending += 1
                    self._lock.notify_all()
                    return record["uid"]
                except OSError as e:
                    self._spool_failed(e)
            if len(self._memory) >= MEMORY_LIMIT:
                self.lost += 1
                self.last_error = f"{_clock()} 記録を保存できませんでした（控えもメモリも満杯）: 失われた記録 {self.lost} 件"
                return ""
            self._memory.append(record)
            self._pending += 1
            self._lock.notify_all()
            return record["uid"]

    def _spool_failed(self, e: OSError) -> None:
        if self._spool is not None:
            try:
                self._spool.close()
            except OSError:
                pass
        self._spool = None
        self.spool_error = (f"{_clock()} 控えファイル {self.spool_path} に書けません（{type(e).__name__}: {e}）。"
                            "記録はメモリ上にあり、このデスクが止まると失われます")
        print(f"madoguchi log: cannot write the spool {self.spool_path} ({e}); keeping records in memory",
              file=sys.stderr, flush=True)

    def _next_batch(self) -> tuple[list[dict], str, int]:
        """(records, where from, spool offset after them); called with the lock held."""
        if self._memory:
            return self._memory[:BATCH], "memory", self._offset
        if self._reader is None or self._offset >= self._size:
            return [], "", self._offset
        self._reader.seek(self._offset)
        records, offset = [], self._offset
        while len(records) < BATCH and offset < self._size:
            line = self._reader.readline()
            if not line.endswith(b"\n"):
                break
            offset += len(line)
            try:
                records.append(json.loads(line))
            except ValueError:  # a torn line sealed off at start: it was never acknowledged
                self._pending -= 1
        return records, "spool", offset

    # -- the writer thread ---------------------------------------------------------------------

    def _run(self) -> None:
        failures = 0
        while True:
            with self._lock:  # the first round migrates the schema, work or not
                while not self._closing and self.schema is not None and not self._memory \
                        and self._offset >= self._size:
                    self._lock.wait()
                if self._closing:
                    return
                batch, source, offset = self._next_batch()
            try:
                if self.schema is None:
                    self.schema = self.backend.migrate()
                rejected = self.backend.insert(batch) if batch else []
            except Unavailable as e:
                self.schema = None  # migrate again on reconnecting: the database may have been replaced
                self._failed(e)
                self._stop.wait(RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)])
                failures += 1
                continue
            if failures or self.last_error:
                print(f"madoguchi log: writing to {self.backend.label} again", file=sys.stderr, flush=True)
            failures = 0
            self.last_error = ""
            self.down_since = None
            for record, reason in rejected:
                self._reject(record, reason)
            with self._lock:
                if source == "memory":
                    del self._memory[:len(batch)]
                else:
                    self._offset = offset
                self._pending -= len(batch)
                self.written += len(batch) - len(rejected)
                if self._spool is not None and self._offset >= self._size and self._size:
                    self._spool.truncate(0)  # everything spooled is stored: start the spool afresh
                    self._offset = self._size = 0
                self._lock.notify_all()

    def _failed(self, e: Exception) -> None:
        first = self.down_since is None
        if first:
            self.down_since = time.time()
        with self._lock:
            pending = self._pending
        self.last_error = (f"{_clock()} データベースに書き込めません（{self.backend.label}）: {e}。"
                           f"未書き込みの記録 {pending} 件は控え（{self.spool_path.name}）に保存済みで、"
                           "つながりしだい書き込みます")
        if first:
            print(f"madoguchi log: cannot write to {self.backend.label}: {e}; {pending} records wait in "
                  f"{self.spool_path}, retrying", file=sys.stderr, flush=True)

    def _reject(self, record: dict, reason: str) -> None:
        """A record the database refuses for its content: set aside (never silently dropped)."""
        self.rejected += 1
        print(f"madoguchi log: the database refused record {record.get('uid')} ({reason}); kept in "
              f"{self.rejected_path}", file=sys.stderr, flush=True)
        try:
            with open(self.rejected_path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"reason": reason, "record": record}, ensure_ascii=False) + "\n")
        except OSError:
            pass


def _clock() -> str:
    return time.strftime("%H:%M:%S")
