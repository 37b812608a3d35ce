"""The log in PostgreSQL: one database for many desks, so the staff view sees every desk's visitors.

psycopg 3, imported only when a desk is pointed at PostgreSQL. The log's writer thread keeps one
connection; the staff view opens its own for each read (rare, and never on an answer's path).
"""

from __future__ import annotations

import uuid
from contextlib import contextmanager
from datetime import datetime
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import psycopg

from chatbot.store.schema import (FIELDS, FLAGS, SCHEMA_VERSION, Unavailable, empty_stats, insert_statements, stats,
                                  stored_version, upgrade)

CONNECT_TIMEOUT = 3  # seconds (libpq's minimum is 2)
STATEMENT_TIMEOUT_MS = 10_000
MIGRATION_LOCK = 0x6D61646F  # pg_advisory_xact_lock key ("mado"): one desk migrates, the others wait
DAY = "to_char(at AT TIME ZONE 'Asia/Tokyo', 'YYYY-MM-DD')"  # the staff view counts days in Japan time

STEPS = {
    1: ["""CREATE TABLE IF NOT EXISTS questions (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, at timestamptz NOT NULL, channel text NOT NULL,
            question text NOT NULL, context text, audience text, abstained boolean NOT NULL,
            ambiguous boolean NOT NULL, top_key text, elapsed_ms real)""",
        "CREATE INDEX IF NOT EXISTS questions_at ON questions (at)",
        """CREATE TABLE IF NOT EXISTS feedback (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, at timestamptz NOT NULL, channel text NOT NULL,
            question text NOT NULL, key text, helpful boolean NOT NULL)"""],
    2: ["ALTER TABLE questions ADD COLUMN uid uuid, ADD COLUMN replica text",
        "CREATE UNIQUE INDEX questions_uid ON questions (uid)",
        "ALTER TABLE feedback ADD COLUMN uid uuid, ADD COLUMN replica text",
        "CREATE UNIQUE INDEX feedback_uid ON feedback (uid)"],
    3: ["ALTER TABLE feedback ADD COLUMN staff text",
        """CREATE TABLE IF NOT EXISTS staff_accounts (
            name text PRIMARY KEY, hash text NOT NULL, created_at text NOT NULL,
            failures integer NOT NULL DEFAULT 0, locked_until text)"""],
}
assert max(STEPS) == SCHEMA_VERSION


INSERT = insert_statements("%s")
# What says "this record" (bad data, a constraint): only these set one record aside. Anything else
# (connection, privileges, a changed schema) says "this database, now": the records wait.
REFUSED = (psycopg.DataError, psycopg.IntegrityError, ValueError)


def masked(url: str) -> str:
    """The URL without its password (in the netloc or as ?password=)."""
    parts = urlsplit(url)
    if parts.password is None and "password" not in parts.query:
        return url
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(f":{parts.password}@", ":***@", 1)
    query = urlencode([(k, "***" if k == "password" else v) for k, v in parse_qsl(parts.query)])
    return urlunsplit(parts._replace(netloc=netloc, query=query))


class PostgresBackend:
    mark = "%s"

    def __init__(self, url: str, application_name: str = "madoguchi"):
        self.url = url
        self.label = masked(url)
        self._secrets = _secrets(url)
        self.application_name = application_name[:63]
        self._conn: psycopg.Connection | None = None  # the writer's; the writer thread alone uses it

    def _connect(self) -> psycopg.Connection:
        try:
            return psycopg.connect(self.url, connect_timeout=CONNECT_TIMEOUT, application_name=self.application_name,
                                   options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}")
        except psycopg.Error as e:
            raise Unavailable(self._describe(e)) from e

    def _writer(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
        return self._conn

    def _drop_writer(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass
        self._conn = None

    def migrate(self) -> tuple[int, int]:
        conn = self._writer()
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                found = _version(conn)
                upgrade(conn.execute, found, STEPS)
            return found, SCHEMA_VERSION
        except psycopg.Error as e:
            self._drop_writer()
            raise Unavailable(self._describe(e)) from e

    def insert(self, records: list[dict]) -> list[tuple[dict, str]]:
        conn = self._writer()
        try:
            try:
                with conn.transaction(), conn.cursor() as cur:
                    for kind in INSERT:
                        rows = [_row(r) for r in records if r["kind"] == kind]
                        if rows:
                            cur.executemany(INSERT[kind], rows)
                return []
            except REFUSED:  # some record's content (e.g. a value out of range): find which
                pass
            rejected = []
            with conn.transaction():
                for r in records:
                    try:
                        with conn.transaction():  # a savepoint per record
                            conn.execute(INSERT[r["kind"]], _row(r))
                    except REFUSED as e:
                        rejected.append((r, f"{type(e).__name__}: {e}"))
            return rejected
        except psycopg.Error as e:
            self._drop_writer()
            raise Unavailable(self._describe(e)) from e

    @contextmanager
    def _session(self):
        """A connection of its own for one read or clear (not the writer's); errors mean "not now"."""
        try:
            with self._connect() as conn:
                yield conn
        except psycopg.Error as e:
            raise Unavailable(self._describe(e)) from e

    def _read(self, queries: list[tuple[str, tuple]]) -> list[list[tuple]]:
        with self._session() as conn:
            if _version(conn) == 0:
                return []
            return [conn.execute(sql, params).fetchall() for sql, params in queries]

    def stats(self, days: int, top: int) -> dict:
        got = self._read([
            (f"SELECT {DAY} AS day, count(*), count(*) FILTER (WHERE abstained) FROM questions"
             " GROUP BY day ORDER BY day DESC LIMIT %s", (days,)),
            ("SELECT question, count(*) AS n FROM questions WHERE abstained AND channel <> 'api'"
             " GROUP BY question ORDER BY n DESC, max(at) DESC LIMIT %s", (top,)),
            ("SELECT count(*) FILTER (WHERE helpful), count(*) FILTER (WHERE NOT helpful), count(*) FROM feedback", ()),
            ("SELECT coalesce(replica, ''), count(*), max(at) FROM questions GROUP BY 1 ORDER BY 2 DESC", ()),
        ])
        if not got:
            return empty_stats()
        per_day, no_match, [(helpful, unhelpful, feedback)], replicas = got
        return stats(per_day, no_match, helpful, unhelpful, feedback,
                     [(name, n, last.isoformat(timespec="seconds")) for name, n, last in replicas])

    def version(self) -> int:
        with self._session() as conn:
            return _version(conn)

    def count(self) -> dict:
        got = self._read([("SELECT (SELECT count(*) FROM questions), (SELECT count(*) FROM feedback)", ())])
        questions, feedback = got[0][0] if got else (0, 0)
        return {"questions": questions, "feedback": feedback}

    def clear(self) -> None:
        with self._session() as conn:
            if _version(conn):
                conn.execute("TRUNCATE questions, feedback")

    def prune(self, before: datetime) -> dict:
        with self._session() as conn:
            if not _version(conn):
                return {"questions": 0, "feedback": 0}
            return {table: conn.execute(f"DELETE FROM {table} WHERE at < %s", (before,)).rowcount
                    for table in ("questions", "feedback")}

    def execute(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._session() as conn:
            cursor = conn.execute(sql, params)
            return cursor.fetchall() if cursor.description else []

    def close(self) -> None:
        self._drop_writer()

    def _describe(self, e: Exception) -> str:
        """The error's first line, without the password (libpq quotes parts of a URL it cannot parse)."""
        message = str(e).strip().splitlines()[0] if str(e).strip() else ""
        for secret in self._secrets:
            message = message.replace(secret, "***")
        return f"{type(e).__name__}: {message}"


def _version(conn: psycopg.Connection) -> int:
    tables = {name for (name,) in conn.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")}
    return stored_version(tables, lambda: conn.execute("SELECT max(version) FROM schema_version").fetchone()[0])


def _row(r: dict) -> tuple:
    out = []
    for f in FIELDS[r["kind"]]:
        value = r.get(f)
        if f == "uid":
            value = uuid.UUID(value)
        elif f == "at":
            value = datetime.fromisoformat(value)
        elif f in FLAGS:
            value = bool(value)
        out.append(value)
    return tuple(out)


def _secrets(url: str) -> list[str]:
    password = urlsplit(url).password if "://" in url else None
    return [p for p in {password, unquote(password or "")} if p]
