"""Shared fixtures: a real desk (`python app.py`) for the desk and browser tests, once per log
backend (SQLite, then a throwaway PostgreSQL), so every desk test runs on both.

Each desk starts on an empty index directory, so it builds its own index first (the
build-on-first-start path), on a free port with its data directory in a temporary folder.
"""

from __future__ import annotations

import os
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))  # the helper modules next to the tests (postgres, logdb, …)
START_TIMEOUT = 180  # seconds: a cold index build takes about 30


from desk_process import STAFF  # noqa: E402 - after the sys.path line


@dataclass
class RunningDesk:
    url: str
    data_dir: Path
    index_dir: Path
    output: list[str]  # the desk's console (stdout and stderr), line by line
    log_url: str  # where it logs: read it with tests/logdb.query
    bank: Path  # its question bank file (console corrections)
    staff: tuple[str, str] = STAFF  # the console account created before it started

    def console(self):
        """A gradio_client logged in to the staff console."""
        from gradio_client import Client

        return Client(self.url + "/staff/", auth=self.staff, verbose=False)

    @property
    def db(self) -> Path:
        """The SQLite file (absent when the desk logs to PostgreSQL)."""
        return self.data_dir / "madoguchi.sqlite3"


@pytest.fixture(scope="session")
def lean_index(tmp_path_factory) -> Path:
    """An index built here with the encoder the desk loads (quicker than a desk's own build), for
    the tests that start desks of their own."""
    from chatbot import embed, index

    root = tmp_path_factory.mktemp("lean-index")
    index.build(REPO / "corpus", root, embed.load_encoder(), progress=False)
    return root


@pytest.fixture(scope="session")
def pg_cluster():
    """A throwaway PostgreSQL cluster for the whole session (tests/postgres.py). Without PostgreSQL
    installed the PostgreSQL half of the store tests is skipped, except under CI, where it fails."""
    import postgres

    reason = postgres.available()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI must test the PostgreSQL store: {reason}")
        pytest.skip(reason)
    cluster = postgres.Cluster()
    try:
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """An empty log database of each kind: the store tests run once per backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db' / 'madoguchi.sqlite3'}"
    cluster = request.getfixturevalue("pg_cluster")
    return cluster.new_database(f"t_{uuid.uuid4().hex[:16]}")


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def desk(request, tmp_path_factory) -> RunningDesk:
    from desk_process import DeskProcess

    root = tmp_path_factory.mktemp("desk")
    if request.param == "sqlite":
        log_url, db = f"sqlite:///{root / 'data' / 'madoguchi.sqlite3'}", ""
    else:
        log_url = db = request.getfixturevalue("pg_cluster").new_database(f"desk_{uuid.uuid4().hex[:12]}")
    try:
        proc = DeskProcess(root / "index", root / "data", db=db, timeout=START_TIMEOUT, staff=STAFF)
    except RuntimeError as e:
        pytest.fail(str(e))
    try:
        yield RunningDesk(proc.url, proc.data_dir, root / "index", proc.output, log_url, proc.bank)
    finally:
        proc.stop()
