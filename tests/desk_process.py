"""A desk (`python app.py`) as a child process: the session desks of tests/conftest.py and the
tests that start, kill -9 or restart their own. 127.0.0.1, a free port, the console drained by a
thread for the desk's whole life. Stopped by its PID only.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
READY = "madoguchi: ready at"
STAFF = ("tester", "correct-horse-battery")  # the console login of the tests' desks


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DeskProcess:
    def __init__(self, index_dir: Path, data_dir: Path, *, corpus_dir: Path | None = None, timeout: float = 240,
                 db: str = "", replica: str = "", staff: tuple[str, str] | None = None, env: dict | None = None):
        """`staff`: (name, password) of a console account created before the desk starts."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = Path(data_dir)
        extra_env = env
        env = {**os.environ, "MADOGUCHI_INDEX": str(index_dir), "PYTHONUNBUFFERED": "1"}
        for name in ("MADOGUCHI_DATA", "MADOGUCHI_DB", "MADOGUCHI_REPLICA"):  # the test decides, not the shell
            env.pop(name, None)
        env.update(extra_env or {})
        if corpus_dir is not None:
            env["MADOGUCHI_CORPUS"] = str(corpus_dir)
        self.bank = Path(data_dir).with_name(Path(data_dir).name + "-bank.jsonl")  # console corrections: the test's
        env["MADOGUCHI_BANK"] = str(self.bank)
        self.staff = staff
        if staff:
            subprocess.run([sys.executable, "-m", "chatbot", "staff", "add", staff[0], "--password-stdin",
                            "--data-dir", str(data_dir), *(["--db", db] if db else [])],
                           input=staff[1] + "\n", text=True, cwd=REPO, env=env, check=True, capture_output=True)
        self.output: list[str] = []
        self._ready = threading.Event()
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
