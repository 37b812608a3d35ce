"""What the bench scripts that start a desk share: where it listens, when it is ready, its memory and
CPU, and the desk itself as a child process (DeskProcess).

A bench script imports this module from beside itself (`from desk_probe import ...`): the scripts
are run as `python bench/<name>.py`, so bench/ is on sys.path.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

HOST = "127.0.0.1"  # loopback only: these benchmarks never send traffic elsewhere
READY = "madoguchi: ready at"  # the line app.py prints once it serves
REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process in MB, or None once it has gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def cpu_s(pid: int) -> float | None:
    """User + system CPU seconds the process has used (/proc/<pid>/stat), or None once it has gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def desk_env(index_dir: Path) -> dict:
    """The environment for a benchmarked desk: this index, unbuffered console, and none of the
    operator's MADOGUCHI_DATA / _DB / _REPLICA, so a bench never logs into a real database; no rate
    limit (tests/test_console.py checks it)."""
    env = dict(os.environ, MADOGUCHI_INDEX=str(index_dir), PYTHONUNBUFFERED="1")
    for name in ("MADOGUCHI_DATA", "MADOGUCHI_DB", "MADOGUCHI_REPLICA"):
        env.pop(name, None)
    env["MADOGUCHI_RATE_LIMIT"] = "0"  # every load client is 127.0.0.1: measure the desk, not the limit
    return env


class DeskProcess:
    """`python app.py --host 127.0.0.1 --port <port> <args>` as a child process, ready when built.

    The constructor returns once the desk has printed its ready line (or raises, with the tail of
    its console, when it exits or times out first). Its console (stdout and stderr) is drained by a
    thread, since a full pipe would stall the desk, into `output` and, if given, a log file.
    Signals go to this PID only.
    """

    def __init__(self, args: list[str], env: dict, *, port: int | None = None, log: Path | None = None,
                 timeout: float = 300.0):
        self.port = port or free_port()
        self.url = f"http://{HOST}:{self.port}/"
        self.output: list[str] = []
        self.log = log
        self._lines: queue.Queue[str] = queue.Queue()
        self._log_file = open(log, "a", encoding="utf-8") if log else None
        started = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "app.py", "--host", HOST, "--port", str(self.port), *map(str, args)],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        threading.Thread(target=self._drain, daemon=True).start()
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=0.5)
            except queue.Empty:
                line = ""
            if line.startswith(READY):
                self.ready_line = line.strip()
                break
            if line == "" and self.proc.poll() is not None and self._lines.empty():
                time.sleep(0.2)  # let the drain thread catch the last lines
                raise RuntimeError(f"the desk exited ({self.proc.returncode}):\n" + "\n".join(self.output[-30:]))
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"the desk was not ready within {timeout:.0f} s:\n" + "\n".join(self.output[-30:]))
        self.start_s = round(time.perf_counter() - started, 1)

    def _drain(self) -> None:
        for line in self.proc.stdout:
            self.output.append(line.rstrip("\n"))
            if self._log_file:
                self._log_file.write(line)
                self._log_file.flush()
            self._lines.put(line)
        if self._log_file:
            self._log_file.close()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss(self) -> float | None:
        return rss_mb(self.proc.pid)

    def cpu(self) -> float | None:
        return cpu_s(self.proc.pid)

    def kill(self) -> int | None:
        """SIGKILL (kill -9): no shutdown at all, as in a crash or an OOM kill."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        return self.proc.wait(10)

    def terminate(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL if the desk has not exited within `timeout`; its exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    stop = terminate
