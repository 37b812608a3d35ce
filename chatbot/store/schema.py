"""What every backend of the log shares: the records, the schema version, and the two errors.

A record is a plain dict, the same in the spool file and in both databases:
  question: uid, kind="question", at, replica, channel, question, context, audience, abstained,
            ambiguous, top_key, elapsed_ms
  feedback: uid, kind="feedback", at, replica, channel, question, key, helpful, staff (who, in the console)
`uid` (a UUID made by the desk) is unique in the database, so writing a record twice stores it once:
that is what makes replaying the spool after a crash safe.
"""

from __future__ import annotations

from typing import Protocol

# 1: questions + feedback (the single-desk log of issue 6)
# 2: + uid (unique) and replica on both tables (many desks, replayable writes)
# 3: + staff_accounts (the console's logins, shared by every desk on the database), feedback.staff
SCHEMA_VERSION = 3

QUESTION_FIELDS = ("uid", "at", "replica", "channel", "question", "context", "audience", "abstained",
                   "ambiguous", "top_key", "elapsed_ms")
FEEDBACK_FIELDS = ("uid", "at", "replica", "channel", "question", "key", "helpful", "staff")
FIELDS = {"question": QUESTION_FIELDS, "feedback": FEEDBACK_FIELDS}
OPTIONAL = {"staff"}  # fields a record spooled by an older desk lacks (stored as NULL)
FLAGS = ("abstained", "ambiguous", "helpful")  # yes/no fields: 0/1 in SQLite, boolean in PostgreSQL
TABLES = {"question": "questions", "feedback": "feedback"}


def insert_statements(mark: str) -> dict[str, str]:
    """kind → INSERT that skips a uid already stored; `mark` is the driver's placeholder (? or %s)."""
    return {kind: f"INSERT INTO {TABLES[kind]} ({', '.join(fields)}) VALUES ({', '.join([mark] * len(fields))})"
                  " ON CONFLICT (uid) DO NOTHING" for kind, fields in FIELDS.items()}


class Unavailable(Exception):
    """The database cannot be reached or written just now: keep the records and try again later."""


def upgrade(execute, found: int, steps: dict[int, list[str]]) -> None:
    """Run a backend's migration steps after version `found` and record the new version, in the
    caller's transaction (so a desk that fails half-way leaves the old version intact)."""
    if found > SCHEMA_VERSION:
        raise Unavailable(too_new(found))
    if found == SCHEMA_VERSION:  # nothing to do: a role that may only read and insert is enough
        return
    for version in range(found + 1, SCHEMA_VERSION + 1):
        for statement in steps[version]:
            execute(statement)
    execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
    execute("DELETE FROM schema_version")
    execute(f"INSERT INTO schema_version VALUES ({SCHEMA_VERSION})")


def stored_version(tables: set[str], latest) -> int:
    """The schema version of a database with these tables; `latest()` reads schema_version."""
    if "schema_version" in tables:
        return latest() or 0
    return 1 if "questions" in tables else 0  # issue 6's desks wrote version 1 without saying so


def too_new(found: int) -> str:
    return (f"the database's log schema is version {found}, newer than this desk's {SCHEMA_VERSION}: "
            "update the desk (git pull) before pointing it at this database")


def empty_stats() -> dict:
    return {"per_day": [], "no_match": [], "helpful": 0, "unhelpful": 0, "questions": 0, "feedback": 0,
            "replicas": []}


def stats(per_day: list, no_match: list, helpful: int, unhelpful: int, feedback: int, replicas: list) -> dict:
    """The analytics from a backend's query results: per_day newest first as queried (returned oldest
    first), replicas as (name, questions, last ISO time)."""
    return {"per_day": [tuple(row) for row in reversed(per_day)], "no_match": [tuple(row) for row in no_match],
            "helpful": helpful, "unhelpful": unhelpful, "questions": sum(n for _, n, _ in replicas),
            "feedback": feedback, "replicas": [tuple(row) for row in replicas]}


class Backend(Protocol):
    label: str  # where the log is, for the console and the staff view (never with a password)

    def migrate(self) -> tuple[int, int]:
        """Bring the schema to SCHEMA_VERSION; (version found, version now). Raises Unavailable."""

    def insert(self, records: list[dict]) -> list[tuple[dict, str]]:
        """Store the records in one transaction, skipping uids already stored. Returns the records
        the database refused, with the reason; raises Unavailable when nothing could be written."""

    def stats(self, days: int, top: int) -> dict:
        """See chatbot.store.Log.stats. Raises Unavailable."""

    def version(self) -> int:
        """The schema version stored (0: no log yet). Raises Unavailable."""

    def count(self) -> dict:
        """{"questions": n, "feedback": n}. Raises Unavailable."""

    def clear(self) -> None:
        """Delete every stored question and feedback (the schema stays). Raises Unavailable."""

    def prune(self, before) -> dict:
        """Delete the questions and feedback older than `before` (an aware datetime); how many of
        each went. Raises Unavailable."""

    mark: str  # the driver's placeholder, ? or %s

    def execute(self, sql: str, params: tuple = ()) -> list[tuple]:
        """One statement of chatbot/staff.py on the migrated schema, committed; its rows, if any.
        Raises Unavailable."""
