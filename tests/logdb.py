"""Reading the desk's log straight from its database in tests, whichever backend it is.

`query(url, sql, *params)` takes SQLite-style `?` placeholders and returns plain tuples (PostgreSQL's
booleans as 0/1, uuids as hex), so one assertion serves both backends. `eventually` and
`query_when` wait for the log's writer thread, which stores records a moment after they are
acknowledged.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from pathlib import Path


def query(url: str, sql: str, *params) -> list[tuple]:
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if not path.exists():
            return []
        with sqlite3.connect(path) as db:
            return [tuple(row) for row in db.execute(sql, params)]
    import psycopg

    with psycopg.connect(url, connect_timeout=5) as conn:
        rows = conn.execute(sql.replace("?", "%s"), params).fetchall()
    return [tuple(int(v) if isinstance(v, bool) else v.hex if isinstance(v, uuid.UUID) else v for v in row)
            for row in rows]


def scalar(url: str, sql: str, *params):
    rows = query(url, sql, *params)
    return rows[0][0] if rows else None


def query_when(url: str, sql: str, expect, *params) -> list[tuple]:
    """The rows once `expect(rows)` holds (the log writes a moment after it acknowledges), else
    the rows as they are when `eventually` gives up."""
    def check():
        found = query(url, sql, *params)
        return found if expect(found) else None

    return eventually(check) or query(url, sql, *params)


def eventually(check, timeout: float = 15.0, every: float = 0.05):
    """check()'s first truthy result within `timeout` seconds, else its last result."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(every)


class Outage:
    """Takes the log's database away and brings it back: PostgreSQL is stopped and started again;
    a SQLite file's folder is swapped for a plain file, so SQLite can neither open nor create it."""

    def __init__(self, url: str, cluster=None):
        self.url, self.cluster = url, cluster
        self.folder = Path(url.removeprefix("sqlite:///")).parent if url.startswith("sqlite:///") else None

    def __enter__(self):
        if self.folder is None:
            self.cluster.stop()
        else:
            self.folder.rename(self.folder.with_name(self.folder.name + ".away"))
            self.folder.write_text("not a folder")
        return self

    def __exit__(self, *exc):
        if self.folder is None:
            self.cluster.start()
        else:
            self.folder.unlink()
            self.folder.with_name(self.folder.name + ".away").rename(self.folder)
