"""A desk (`python app.py`) as a child process, for tests that start, kill -9 or restart their own.

Like tests/conftest.py: 127.0.0.1, a free port, the console drained by a thread. Stopped by its
PID only.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
READY = "madoguchi: ready at"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DeskProcess:
    def __init__(self, index_dir: Path, data_dir: Path, *, corpus_dir: Path | None = None, timeout: float = 240,
                 port: int | None = None, db: str = "", replica: str = ""):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = Path(data_dir)
        env = {**os.environ, "MADOGUCHI_INDEX": str(index_dir), "PYTHONUNBUFFERED": "1"}
        env.pop("MADOGUCHI_DATA", None)
        if corpus_dir is not None:
            env["MADOGUCHI_CORPUS"] = str(corpus_dir)
        self.output: list[str] = []
        self._ready = threading.Event()
        env.pop("MADOGUCHI_DB", None)
        options = [*(["--db", db] if db else []), *(["--replica", replica] if replica else [])]
        self.proc = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--port", str(self.port),
                                      "--data-dir", str(data_dir), *options],
                                     cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(timeout) or self.proc.poll() is not None:
            self.kill()
            raise RuntimeError("the desk did not start:\n" + "\n".join(self.output[-30:]))

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.output.append(line.rstrip("\n"))
            if line.startswith(READY):
                self._ready.set()
        self._ready.set()

    @property
    def db(self) -> Path:
        return self.data_dir / "madoguchi.sqlite3"

    def rss_mb(self) -> float | None:
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def kill(self) -> None:
        """SIGKILL (kill -9) to this PID only."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
