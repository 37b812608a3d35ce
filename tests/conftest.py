"""Shared fixtures: one real desk (`python app.py`) per test session, for the desk and browser tests.

The desk starts on an empty index directory, so it builds its own index first (the
build-on-first-start path), on a free port with its data directory in a temporary folder.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT = 180  # seconds: a cold index build takes about 30


@dataclass
class RunningDesk:
    url: str
    data_dir: Path
    index_dir: Path
    output: list[str]  # the desk's console (stdout and stderr), line by line
    started_in: float

    @property
    def db(self) -> Path:
        return self.data_dir / "madoguchi.sqlite3"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def desk(tmp_path_factory) -> RunningDesk:
    root = tmp_path_factory.mktemp("desk")
    port = _free_port()
    env = {**os.environ, "MADOGUCHI_INDEX": str(root / "index"), "PYTHONUNBUFFERED": "1"}
    env.pop("MADOGUCHI_DATA", None)
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--port", str(port), "--data-dir", str(root / "data")],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output: list[str] = []
    ready = threading.Event()

    def read():  # drains the pipe for the whole session, so the desk never blocks on it
        for line in proc.stdout:
            output.append(line.rstrip("\n"))
            if line.startswith("madoguchi: ready at"):
                ready.set()
        ready.set()  # the process ended: stop waiting

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(START_TIMEOUT) or proc.poll() is not None:
        proc.kill()
        pytest.fail("the desk did not start:\n" + "\n".join(output[-30:]))
    try:
        yield RunningDesk(f"http://127.0.0.1:{port}", root / "data", root / "index", output, time.perf_counter() - started)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
