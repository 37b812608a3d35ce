"""Shared fixtures.

- Every test runs with the MADOGUCHI_* settings of this file, never the user's: a model cache
  for the session, and per test a data directory and a question bank of its own, all temporary.
  Child processes (desks, CLI runs, bench scripts) inherit them through os.environ.
- One embedding model (`encoder`) and one index of the real corpus (`built`, its directory
  `lean_index`) for the whole session. Tests that damage or rebuild an index do it on a copy
  (tests/index_copies.py) or build their own.
- A real desk (`python app.py`, bench/desk_probe.DeskProcess) per log backend (SQLite, then a
  throwaway PostgreSQL), so every desk test runs on both.
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))  # the helper modules next to the tests (postgres, logdb, …)
sys.path.insert(0, str(REPO / "bench"))  # desk_probe: the one DeskProcess, shared with the bench scripts
START_TIMEOUT = 180  # seconds: a cold index build takes about 30

from desk_probe import STAFF, DeskProcess  # noqa: E402 - after the sys.path lines

# MADOGUCHI_* variables that steer the test suite itself rather than the desk: kept from the shell.
SUITE_SETTINGS = {"MADOGUCHI_SCREENSHOT"}  # tests/test_browser.py: where to save the README's screenshot


@pytest.fixture(scope="session", autouse=True)
def madoguchi_environment(tmp_path_factory):
    """The desk's settings for the whole session, none of them the user's: a shell's MADOGUCHI_DB
    or MADOGUCHI_BANK would send test records into a real log or bank, MADOGUCHI_MODEL would change
    every answer. MADOGUCHI_CACHE is one temporary folder for the session, so the embedded model
    is converted into it once (about 4 s), not once per test; MADOGUCHI_INDEX is an empty folder,
    so nothing reads or builds the repository's ./index unasked. Session fixtures (the desks,
    `built`) are set up under these; `own_data_and_bank` then gives each test its own data."""
    with pytest.MonkeyPatch.context() as mp:
        for name in [n for n in os.environ if n.startswith("MADOGUCHI_") and n not in SUITE_SETTINGS]:
            mp.delenv(name)
        mp.setenv("MADOGUCHI_CACHE", str(tmp_path_factory.mktemp("cache")))
        mp.setenv("MADOGUCHI_INDEX", str(tmp_path_factory.mktemp("no-index")))
        session = tmp_path_factory.mktemp("session")
        mp.setenv("MADOGUCHI_DATA", str(session / "data"))
        mp.setenv("MADOGUCHI_BANK", str(session / "bank.jsonl"))
        yield


@pytest.fixture(autouse=True)
def own_data_and_bank(tmp_path_factory, monkeypatch):
    """A data directory and a question bank per test: a log row or a bank entry written by one
    test (a CLI run without --data-dir, say) is never read by another. Neither exists until used."""
    here = tmp_path_factory.mktemp("madoguchi")
    monkeypatch.setenv("MADOGUCHI_DATA", str(here / "data"))
    monkeypatch.setenv("MADOGUCHI_BANK", str(here / "bank.jsonl"))


@pytest.fixture(scope="session")
def encoder():
    """The embedded model on the lean runtime, as the desk and the CLI load it: loaded once."""
    from chatbot import embed

    return embed.load_encoder()


@pytest.fixture(scope="session")
def built(tmp_path_factory, encoder):
    """The session's index of the real corpus (a chatbot.index.Index), built once. Shared, so read
    only: a test that damages or rebuilds an index does it on index_copies.copy_of(built, tmp_path)."""
    from chatbot import index

    return index.build(REPO / "corpus", tmp_path_factory.mktemp("index"), encoder, progress=False)


@pytest.fixture(scope="session")
def lean_index(built) -> Path:
    """The directory of `built` (its CURRENT and its build): MADOGUCHI_INDEX for desks and CLI runs."""
    return built.root.parent


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
def desk(request, tmp_path_factory) -> DeskProcess:
    """A running desk with the STAFF account. The SQLite one starts on an empty index directory and
    builds its index first (the build-on-first-start path); the PostgreSQL one on `lean_index`,
    since a second build would test nothing the first does not."""
    root = tmp_path_factory.mktemp("desk")
    if request.param == "sqlite":
        index_dir, db = root / "index", ""
    else:
        index_dir = request.getfixturevalue("lean_index")
        db = request.getfixturevalue("pg_cluster").new_database(f"desk_{uuid.uuid4().hex[:12]}")
    try:
        proc = DeskProcess(index_dir, root / "data", db=db, staff=STAFF, timeout=START_TIMEOUT)
    except RuntimeError as e:
        pytest.fail(str(e))
    try:
        yield proc
    finally:
        proc.stop()
