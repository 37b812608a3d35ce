"""The log in one SQLite file: the default, for a single desk (or a few on one machine).

WAL mode, so the staff view's reads never wait for the writer. Only the log's writer thread writes
here, so a generous lock timeout costs no answer any time (issue 8's lost rows came from many
threads racing for the lock; now there is one).
"""

from __future__ import annotations

import os
import sqlite3
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from chatbot.store.schema import (FIELDS, FLAGS, SCHEMA_VERSION, Unavailable, empty_stats, insert_statements, stats,
                                  stored_version, upgrade)

LOCK_TIMEOUT = 5.0  # seconds; another process (a second desk, a backup) may hold the lock briefly
# SQLite keeps ISO 8601 text in UTC; the staff view counts days in Japan time (no DST there).
JST = "'+9 hours'"

STEPS = {
    1: ["""CREATE TABLE IF NOT EXISTS questions (
            id INTEGER PRIMARY KEY, at TEXT NOT NULL, channel TEXT NOT NULL, question TEXT NOT NULL,
            context TEXT, audience TEXT, abstained INTEGER NOT NULL, ambiguous INTEGER NOT NULL,
            top_key TEXT, elapsed_ms REAL)""",
        "CREATE INDEX IF NOT EXISTS questions_at ON questions(at)",
        """CREATE TABLE IF NOT EXISTS feedback (
            id INTEGER PRIMARY KEY, at TEXT NOT NULL, channel TEXT NOT NULL, question TEXT NOT NULL,
            key TEXT, helpful INTEGER NOT NULL)"""],
    2: ["ALTER TABLE questions ADD COLUMN uid TEXT",
        "ALTER TABLE questions ADD COLUMN replica TEXT",
        "CREATE UNIQUE INDEX questions_uid ON questions(uid)",
        "ALTER TABLE feedback ADD COLUMN uid TEXT",
        "ALTER TABLE feedback ADD COLUMN replica TEXT",
        "CREATE UNIQUE INDEX feedback_uid ON feedback(uid)"],
    3: ["ALTER TABLE feedback ADD COLUMN staff TEXT",
        """CREATE TABLE IF NOT EXISTS staff_accounts (
            name TEXT PRIMARY KEY, hash TEXT NOT NULL, created_at TEXT NOT NULL,
            failures INTEGER NOT NULL DEFAULT 0, locked_until TEXT)"""],
}
assert max(STEPS) == SCHEMA_VERSION


INSERT = insert_statements("?")
# What says "this record", not "this database": only these set one record aside.
REFUSED = (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.InterfaceError, ValueError)


class SQLiteBackend:
    mark = "?"

    def __init__(self, path: Path):
        self.path = Path(path)
        self.label = f"sqlite:///{self.path}"
        self._private = False

    def _connect(self) -> sqlite3.Connection:
        db = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=LOCK_TIMEOUT, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            if not self._private:  # a file made 0644 by an older desk (its -wal and -shm follow it)
                os.chmod(self.path, 0o600)
                self._private = True
            return db
        except (sqlite3.Error, OSError) as e:
            if db is not None:
                db.close()
            raise Unavailable(f"{type(e).__name__}: {e}") from e

    @contextmanager
    def _session(self):
        """A connection for one operation; any SQLite error means "not now" to the log."""
        db = self._connect()
        try:
            yield db
        except sqlite3.Error as e:
            raise Unavailable(f"{type(e).__name__}: {e}") from e
        finally:
            db.close()

    def _version(self, db: sqlite3.Connection) -> int:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        return stored_version(tables, lambda: db.execute("SELECT max(version) FROM schema_version").fetchone()[0])

    def migrate(self) -> tuple[int, int]:
        with self._session() as db:
            db.execute("BEGIN IMMEDIATE")  # two desks starting together: one migrates, the other waits
            found = self._version(db)
            upgrade(db.execute, found, STEPS)  # raises for a newer schema; closing rolls back
            db.execute("COMMIT")
            return found, SCHEMA_VERSION

    def insert(self, records: list[dict]) -> list[tuple[dict, str]]:
        db = self._connect()
        try:
            try:
                db.execute("BEGIN IMMEDIATE")
                for r in records:
                    db.execute(INSERT[r["kind"]], _row(r))
                db.execute("COMMIT")
                return []
            except REFUSED:  # some record's content: find which, keep the rest
                db.execute("ROLLBACK")
            except sqlite3.Error as e:  # locked, read-only, disk full, missing table, damaged file
                raise Unavailable(f"{type(e).__name__}: {e}") from e
            rejected = []
            db.execute("BEGIN IMMEDIATE")
            for r in records:
                try:
                    db.execute("SAVEPOINT one")
                    db.execute(INSERT[r["kind"]], _row(r))
                    db.execute("RELEASE one")
                except REFUSED as e:
                    db.execute("ROLLBACK TO one")
                    rejected.append((r, f"{type(e).__name__}: {e}"))
                except sqlite3.Error as e:
                    raise Unavailable(f"{type(e).__name__}: {e}") from e
            db.execute("COMMIT")
            return rejected
        finally:
            db.close()

    def stats(self, days: int, top: int) -> dict:
        if not self.path.exists():
            return empty_stats()
        with self._session() as db:
            if self._version(db) == 0:
                return empty_stats()
            per_day = db.execute(
                f"SELECT date(at, {JST}) AS day, count(*), sum(abstained) FROM questions"
                " GROUP BY day ORDER BY day DESC LIMIT ?", (days,)).fetchall()
            no_match = db.execute(
                "SELECT question, count(*) AS n FROM questions WHERE abstained = 1 AND channel <> 'api'"
                " GROUP BY question ORDER BY n DESC, max(at) DESC LIMIT ?", (top,)).fetchall()
            helpful, unhelpful, feedback = db.execute(
                "SELECT coalesce(sum(helpful), 0), coalesce(sum(1 - helpful), 0), count(*) FROM feedback").fetchone()
            replicas = db.execute(
                "SELECT coalesce(replica, ''), count(*), max(at) FROM questions GROUP BY 1 ORDER BY 2 DESC").fetchall()
        return stats(per_day, no_match, helpful, unhelpful, feedback, replicas)

    def version(self) -> int:
        if not self.path.exists():
            return 0
        with self._session() as db:
            return self._version(db)

    def count(self) -> dict:
        if not self.path.exists():  # a status check must not create the database
            return {"questions": 0, "feedback": 0}
        with self._session() as db:
            if self._version(db) == 0:
                return {"questions": 0, "feedback": 0}
            return {"questions": db.execute("SELECT count(*) FROM questions").fetchone()[0],
                    "feedback": db.execute("SELECT count(*) FROM feedback").fetchone()[0]}

    def clear(self) -> None:
        if not self.path.exists():
            return
        with self._session() as db:
            if self._version(db):
                db.execute("BEGIN IMMEDIATE")
                db.execute("DELETE FROM questions")
                db.execute("DELETE FROM feedback")
                db.execute("COMMIT")
                db.execute("VACUUM")  # deleted text must not linger in free pages
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def prune(self, before: datetime) -> dict:
        if not self.path.exists():
            return {"questions": 0, "feedback": 0}
        cutoff = before.astimezone(timezone.utc).isoformat(timespec="milliseconds")  # the stored form: ISO text, UTC
        with self._session() as db:
            if not self._version(db):
                return {"questions": 0, "feedback": 0}
            db.execute("BEGIN IMMEDIATE")
            gone = {kind: db.execute(f"DELETE FROM {table} WHERE at < ?", (cutoff,)).rowcount
                    for kind, table in (("questions", "questions"), ("feedback", "feedback"))}
            db.execute("COMMIT")
            if any(gone.values()):
                db.execute("VACUUM")  # deleted text must not linger in free pages
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return gone

    def execute(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._session() as db:
            return db.execute(sql, params).fetchall()

    def close(self) -> None:
        pass  # a connection per call


def _row(r: dict) -> tuple:
    fields = FIELDS[r["kind"]]
    return tuple(int(r[f]) if f in FLAGS else r.get(f) for f in fields)
