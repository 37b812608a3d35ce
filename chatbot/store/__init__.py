"""The desk's log (questions, no-match questions, 👍/👎 feedback), in SQLite or PostgreSQL.

    open_store(url, data_dir, replica) -> Log

`url` is `--db` / `$MADOGUCHI_DB`: empty for the default SQLite file <data-dir>/madoguchi.sqlite3,
`sqlite:///relative/path`, `sqlite:////absolute/path`, or `postgresql://user[:password]@host[:port]/db`
(any libpq URL; `postgres://` too). chatbot.store.log explains what is written when, and what an
acknowledged record is guaranteed.
"""

from __future__ import annotations

import socket
from pathlib import Path

from chatbot.errors import StoreError
from chatbot.store.log import Log
from chatbot.store.schema import SCHEMA_VERSION, Unavailable

__all__ = ["Log", "SCHEMA_VERSION", "Unavailable", "open_backend", "open_store", "default_replica"]

SQLITE_FILE = "madoguchi.sqlite3"


def open_backend(url: str | None, data_dir: Path, application_name: str = "madoguchi"):
    """The database behind the log; nothing is connected yet."""
    url = (url or "").strip()
    if not url:
        from chatbot.store.sqlite import SQLiteBackend

        return SQLiteBackend(Path(data_dir) / SQLITE_FILE)
    if url.startswith("sqlite:///"):
        from chatbot.store.sqlite import SQLiteBackend

        path = url.removeprefix("sqlite:///")
        if not path or path == ":memory:":
            raise StoreError(f"{url!r} names no file: use sqlite:///relative/path or sqlite:////absolute/path")
        return SQLiteBackend(Path(path).expanduser())
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from chatbot.store.postgres import PostgresBackend
        except ImportError as e:  # psycopg is in requirements.txt; a trimmed install may lack it
            raise StoreError(f"PostgreSQL needs psycopg 3 ({e}): pip install -r requirements.txt") from e
        return PostgresBackend(url, application_name)
    kind = f"{url.split('://')[0]!r}://…" if "://" in url else "(no scheme://)"  # never echo the rest: a password
    raise StoreError(f"unknown database URL {kind}: use sqlite:///PATH or postgresql://USER@HOST:PORT/DATABASE")


def open_store(url: str | None, data_dir: Path, replica: str) -> Log:
    """The log for one desk. Raises StoreError for a bad URL or a replica name already in use."""
    return Log(open_backend(url, data_dir, f"madoguchi {replica}"), data_dir, replica)


def default_replica(port: int | None = None) -> str:
    """hostname[-port]: unique per desk on a machine, readable in the staff view."""
    return socket.gethostname() + (f"-{port}" if port else "")
