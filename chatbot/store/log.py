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
  (or by `python -m chatbot db flush`). A record written twice is stored once (its uid is unique);
- a record the database refuses for its content, or a spool line that cannot be read, is set aside
  in <data-dir>/rejected-<replica>.jsonl with the reason: never dropped, never blocking the rest.
The guarantee: every acknowledged record reaches the database once the database is reachable and the
spool has been drained, unless the desk's own disk is lost. If the spool itself cannot be written
(unwritable data directory, full disk), records are kept in memory (up to MEMORY_LIMIT), the staff
view warns that they would not survive a restart, and the spool is tried again every few seconds.
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
from datetime import datetime, timedelta, timezone
from pathlib import Path

from chatbot import privacy, text
from chatbot.errors import StoreError
from chatbot.store.schema import FIELDS, OPTIONAL, Backend, Unavailable, empty_stats

BATCH = 500
RETRY_SECONDS = (0.5, 1, 2, 5, 10)  # back-off while the database is unavailable
# How long the writer waits for more records before it writes: a record is safe once spooled, and
# under load one transaction per question cost the writer thread a seventh of the desk's CPU.
LINGER_SECONDS = 0.1
MEMORY_LIMIT = 10_000
SPOOL_RETRY_SECONDS = 5  # after a failed spool write, how soon to try the file again
COMPACT_BYTES = 1 << 20  # a writer this far into a spool that keeps growing rewrites the unwritten tail


class Log:
    def __init__(self, backend: Backend, data_dir: Path, replica: str):
        self.backend = backend
        self.replica = replica
        try:  # visitors' questions: this user's alone (the files: the entry points' umask 077)
            Path(data_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(data_dir, 0o700)
        except OSError:
            pass  # the spool reports what it cannot do (_open_spool)
        name = re.sub(r"[^A-Za-z0-9._-]", "_", replica)[:80] or "desk"
        self.spool_path = Path(data_dir) / f"spool-{name}.jsonl"
        self.lock_path = Path(data_dir) / f"spool-{name}.lock"  # one desk per replica name and data directory
        self.rejected_path = Path(data_dir) / f"rejected-{name}.jsonl"
        self.last_error = ""       # shown in the staff view; empty when all is well
        self.spool_error = ""
        self.written = self.rejected = self.lost = 0
        self.schema: tuple[int, int] | None = None  # (version found, version now) after the first migration
        self._lock = threading.Condition()  # the spool, the memory list and the counters
        self._memory: list[dict] = []
        self._pending = 0   # acknowledged, not yet in the database (nor set aside)
        self._offset = 0    # bytes of the spool already in the database
        self._size = 0      # bytes of the spool written (flushed and fsynced)
        self._spool = self._reader = self._lockfile = None
        self._spool_failed_at = 0.0
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

    def log_feedback(self, channel: str, question: str, key: str, helpful: bool, staff: str = "") -> str:
        """`key` is the programme the vote is about ("" for an answer that found nothing); `staff`
        the logged-in staff member who gave it in the console."""
        return self._record("feedback", channel=channel, question=question, key=key or "", helpful=bool(helpful),
                            staff=staff or None)

    def stats(self, days: int = 30, top: int = 10) -> dict:
        """Questions per day (Japan time), the most frequent no-match questions, 👍/👎 counts and
        questions per desk, from the database: with PostgreSQL, every desk's visitors."""
        try:
            out = self.backend.stats(days, top)
        except Unavailable as e:
            out = {**empty_stats(), "error": f"{_clock()} 集計を読めません（{self.backend.label}）: {e}"}
        return {**out, **self.status()}

    def prune(self, days: int) -> dict:
        """Delete the records older than `days` from the database (the retention period)."""
        return self.backend.prune(datetime.now(timezone.utc) - timedelta(days=days))

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
            while self._pending > 0:
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
            self._detach_spool()
            if self._lockfile is not None:
                self._lockfile.close()  # releases the replica name
                self._lockfile = None
        getattr(self.backend, "close", lambda: None)()

    # -- the spool -----------------------------------------------------------------------------

    def _open_spool(self) -> None:
        """Take the replica's lock, then open the spool, replaying what a stopped desk left in it."""
        try:
            self.spool_path.parent.mkdir(parents=True, exist_ok=True)
            lockfile = open(self.lock_path, "ab")
        except OSError as e:
            self._spool_failed(e)
            return
        try:
            fcntl.flock(lockfile, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lockfile.close()
            raise StoreError(f"another desk is running as replica {self.replica!r} with {self.spool_path}: "
                             "give each desk its own --replica name (or data directory)") from None
        self._lockfile = lockfile
        try:
            self._attach_spool()
        except OSError as e:
            self._spool_failed(e)
            return
        if self._size:  # left by a desk that stopped before writing it out: replay it
            with open(self.spool_path, "rb") as f:
                self._pending = f.read().count(b"\n")
            print(f"madoguchi log: {self._pending} records left in {self.spool_path} will be written to "
                  f"{self.backend.label}", file=sys.stderr, flush=True)

    def _attach_spool(self) -> None:
        """Open the spool for appending and reading (with the lock held, or from __init__)."""
        spool = open(self.spool_path, "ab")
        try:
            size = spool.seek(0, os.SEEK_END)
            if size:
                with open(self.spool_path, "rb") as f:
                    f.seek(size - 1)
                    torn = f.read(1) != b"\n"
                if torn:  # a write cut short (crash, full disk) was never acknowledged: seal it off
                    spool.write(b"\n")
                    spool.flush()
                    os.fsync(spool.fileno())
                    size += 1
            reader = open(self.spool_path, "rb")
        except OSError:
            spool.close()
            raise
        self._spool, self._reader, self._size = spool, reader, size
        self.spool_error = ""

    def _detach_spool(self) -> None:
        for handle in (self._spool, self._reader):
            if handle is not None:
                try:
                    handle.close()
                except OSError:
                    pass
        self._spool = self._reader = None

    def _record(self, kind: str, **fields) -> str:
        for k, v in fields.items():
            if isinstance(v, str):  # a lone surrogate cannot be stored anywhere; NUL not in PostgreSQL
                fields[k] = text.scrub(v).replace("\x00", "\ufffd")
        fields["question"] = privacy.mask(fields["question"])  # before the spool: nothing unmasked is written
        record = {"uid": uuid.uuid4().hex, "kind": kind, "at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                  "replica": self.replica, **fields}
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            if self._closing:  # nothing would write it any more
                return ""
            if self._spool is None and self._lockfile is not None \
                    and time.monotonic() - self._spool_failed_at > SPOOL_RETRY_SECONDS:
                try:
                    self._attach_spool()
                    print(f"madoguchi log: writing the spool {self.spool_path} again", file=sys.stderr, flush=True)
                except OSError as e:
                    self._spool_failed(e)
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
        self._detach_spool()
        self._spool_failed_at = time.monotonic()
        self.spool_error = (f"{_clock()} 控えファイル {self.spool_path} に書けません（{type(e).__name__}: {e}）。"
                            "記録はメモリ上にあり、このデスクが止まると失われます")
        _say(f"cannot write the spool {self.spool_path} ({e}); keeping records in memory")

    def _next_batch(self) -> tuple[list[dict], list[tuple[object, str]], str, int]:
        """(records, unusable lines with the reason, where from, spool offset after them); with the
        lock held. A line is unusable when it is not a record this desk could have written (a line
        torn by a crash and sealed off, or a damaged file)."""
        if self._memory:
            return self._memory[:BATCH], [], "memory", self._offset
        if self._reader is None or self._offset >= self._size:
            return [], [], "", self._offset
        self._reader.seek(self._offset)
        records, unusable, offset = [], [], self._offset
        while len(records) + len(unusable) < BATCH and offset < self._size:
            line = self._reader.readline()
            if not line.endswith(b"\n"):
                break
            offset += len(line)
            try:
                record = json.loads(line)
            except (ValueError, RecursionError) as e:
                unusable.append((line.decode("utf-8", "replace"), f"unreadable spool line: {type(e).__name__}"))
                continue
            problem = _problem(record)
            if problem:
                unusable.append((record, problem))
            else:
                records.append(record)
        return records, unusable, "spool", offset

    def _compact(self) -> None:
        """Rewrite the spool from the writer's offset on (with the lock held): under steady load on a
        slow database the writer never quite catches up, and the spool would only grow."""
        tmp = self.spool_path.with_name(self.spool_path.name + ".tmp")
        try:
            self._reader.seek(self._offset)
            tail = self._reader.read(self._size - self._offset)
            with open(tmp, "wb") as f:
                f.write(tail)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.spool_path)  # the replica's lock is on its own file: still held
            self._detach_spool()
            self._attach_spool()
            self._offset = 0
        except OSError as e:  # keep the old spool; try again at the next batch
            _say(f"could not compact the spool {self.spool_path} ({e})")
            if self._spool is None:
                self._spool_failed(e)

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
                linger = self.schema is not None and not failures and self._pending < BATCH
            if linger:  # a moment for more records: one transaction for many (see LINGER_SECONDS)
                self._stop.wait(LINGER_SECONDS)
            with self._lock:
                batch, unusable, source, offset = self._next_batch()
            try:
                if self.schema is None:
                    self.schema = self.backend.migrate()
                rejected = self.backend.insert(batch) if batch else []
                for record, reason in [*rejected, *unusable]:
                    self._set_aside(record, reason)
            except Exception as e:  # noqa: BLE001 - nothing may stop the writer: report, back off, retry
                self.schema = None  # migrate again on reconnecting: the database may have been replaced
                self._failed(e if isinstance(e, Unavailable) else f"{type(e).__name__}: {e}", first=not failures)
                self._stop.wait(RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)])
                failures += 1
                continue
            if failures or self.last_error:
                _say(f"writing to {self.backend.label} again")
            failures = 0
            self.last_error = ""
            with self._lock:
                if source == "memory":
                    del self._memory[:len(batch)]
                else:
                    self._offset = offset
                self._pending -= len(batch) + len(unusable)
                self.written += len(batch) - len(rejected)
                if self._spool is not None and self._offset >= self._size and self._size:
                    self._spool.truncate(0)  # everything spooled is stored: start the spool afresh
                    self._offset = self._size = 0
                elif self._spool is not None and self._offset >= COMPACT_BYTES:
                    self._compact()
                self._lock.notify_all()
                if source and not batch and not unusable:  # nothing complete to read yet: do not spin
                    self._lock.wait(1.0)

    def _failed(self, e: object, first: bool) -> None:
        """Shown in the staff view; on the console only when the database first fails."""
        with self._lock:
            pending = self._pending
        self.last_error = (f"{_clock()} データベースに書き込めません（{self.backend.label}）: {e}。"
                           f"未書き込みの記録 {pending} 件は控え（{self.spool_path.name}）に保存済みで、"
                           "つながりしだい書き込みます")
        if first:
            _say(f"cannot write to {self.backend.label}: {e}; {pending} records wait in {self.spool_path}, retrying")

    def _set_aside(self, record: object, reason: str) -> None:
        """A record the database refuses for its content, or an unusable spool line: kept in the
        rejected file with the reason. If even that cannot be written, nothing moves on (Unavailable)."""
        try:
            with open(self.rejected_path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"reason": reason, "record": record}, ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise Unavailable(f"cannot set a refused record aside in {self.rejected_path}: {e}") from e
        self.rejected += 1
        _say(f"set aside a record ({reason}) in {self.rejected_path}")


def _problem(record: object) -> str:
    """Why a spool line is not a record this desk writes ("" if it is one)."""
    if not isinstance(record, dict) or record.get("kind") not in FIELDS:
        return "not a record"
    missing = [f for f in FIELDS[record["kind"]] if f not in record and f not in OPTIONAL]
    if missing:
        return f"missing {', '.join(missing)}"
    try:
        uuid.UUID(str(record["uid"]))
        datetime.fromisoformat(str(record["at"]))
    except ValueError as e:
        return f"bad uid or time: {e}"
    if not isinstance(record.get("question"), str):
        return "no question text"
    return ""


def _say(message: str) -> None:
    """One line on the console; a closed stderr must not stop the writer."""
    try:
        print(f"madoguchi log: {message}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def _clock() -> str:
    return time.strftime("%H:%M:%S")
