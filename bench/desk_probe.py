"""A desk (`python app.py`) as a child process, for the tests and the bench scripts alike: where it
listens, when it is ready, its console, its memory and CPU, and how it stops.

This is the one home of DeskProcess. It sits in bench/ because the bench scripts run as
`python bench/<name>.py`, outside pytest, and import it from beside themselves (bench/ is then on
sys.path); tests/conftest.py adds bench/ to sys.path with one line. Kept in tests/ instead, every
bench script would need path set-up of its own to reach it.
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

HOST = "127.0.0.1"  # loopback only: neither the tests nor the benchmarks send traffic elsewhere
READY = "madoguchi: ready at"  # the line app.py prints once it serves
REPO = Path(__file__).resolve().parent.parent
STAFF = ("tester", "correct-horse-battery")  # the console account of the tests' desks
# Where a desk writes: the operator's values would send a test's or a bench's records into a real
# log or question bank, so a child started here never inherits them.
OPERATOR_ONLY = ("MADOGUCHI_DATA", "MADOGUCHI_DB", "MADOGUCHI_REPLICA", "MADOGUCHI_BANK")


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
    """The environment of a desk or CLI child over `index_dir`: this process's, without
    OPERATOR_ONLY, with an unbuffered console (the ready line must arrive when it is printed)."""
    env = {name: value for name, value in os.environ.items() if name not in OPERATOR_ONLY}
    env.update(MADOGUCHI_INDEX=str(index_dir), PYTHONUNBUFFERED="1")
    return env


class DeskProcess:
    """`python app.py --host 127.0.0.1 --port <port> --data-dir <data_dir> ...` as a child process.

    The constructor returns once the desk has printed its ready line, or raises RuntimeError with
    the tail of its console when it exits or times out first (it is then killed). Its console
    (stdout and stderr) is drained by a thread for the desk's whole life, since a full pipe would
    stall it, into `output` and, if given, appended to the file `log`. Signals go to this PID only.

    index_dir   the index it serves (MADOGUCHI_INDEX); an empty or stale one is built at the start
    data_dir    its --data-dir: the log's spool, and the SQLite file unless `db` is given
    corpus_dir  MADOGUCHI_CORPUS (None: the desk's default, the repository's corpus)
    db          --db, the log's database URL ("": SQLite in data_dir)
    replica     --replica ("": the desk's default, <hostname>-<port>)
    staff       (name, password) of a console account created (`python -m chatbot staff add`)
                before the desk starts, in the same log
    rate_limit  MADOGUCHI_RATE_LIMIT (None: the desk's default; 0: off, for load benchmarks whose
                clients all share 127.0.0.1)
    env         more environment variables, set last
    args        more arguments for app.py
    port        the port (None: a free one)
    log         a file that gets a copy of the console
    timeout     seconds to wait for the ready line

    The desk's question bank (MADOGUCHI_BANK) is its own file, `bank`, beside data_dir.
    """

    def __init__(self, index_dir: Path, data_dir: Path, *, corpus_dir: Path | None = None, db: str = "",
                 replica: str = "", staff: tuple[str, str] | None = None, rate_limit: float | None = None,
                 env: dict | None = None, args: list | tuple = (), port: int | None = None, log: Path | None = None,
                 timeout: float = 300.0):
        self.index_dir, self.data_dir = Path(index_dir), Path(data_dir)
        self.port = port or free_port()
        self.url = f"http://{HOST}:{self.port}"  # no trailing slash: callers append "/staff/", "/api/…"
        self.staff = staff
        self.log_url = db or f"sqlite:///{self.sqlite_file}"  # where its log is, for reading it back
        self.bank = self.data_dir.with_name(self.data_dir.name + "-bank.jsonl")  # console corrections go here
        child_env = desk_env(self.index_dir)
        child_env["MADOGUCHI_BANK"] = str(self.bank)
        if corpus_dir is not None:
            child_env["MADOGUCHI_CORPUS"] = str(corpus_dir)
        if rate_limit is not None:
            child_env["MADOGUCHI_RATE_LIMIT"] = str(rate_limit)
        child_env.update(env or {})
        log_options = ["--db", db] if db else []
        if staff:
            done = subprocess.run([sys.executable, "-m", "chatbot", "staff", "add", staff[0], "--password-stdin",
                                   "--data-dir", str(self.data_dir), *log_options],
                                  input=staff[1] + "\n", text=True, cwd=REPO, env=child_env, capture_output=True)
            if done.returncode != 0:
                raise RuntimeError(f"cannot create the staff account {staff[0]!r}:\n{done.stderr[-2000:]}")

        self.output: list[str] = []
        self.ready_line = ""
        self._ended = False  # the console reached its end: the desk has closed it, so it is exiting
        self._ready = threading.Event()  # set by the ready line or by the console's end
        self._log = open(log, "a", encoding="utf-8") if log else None
        started = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "app.py"), "--host", HOST, "--port", str(self.port),
             "--data-dir", str(self.data_dir), *log_options, *(["--replica", replica] if replica else []),
             *map(str, args)],
            cwd=REPO, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, encoding="utf-8", errors="replace", bufsize=1)  # a stray byte must not end the drain
        threading.Thread(target=self._drain, daemon=True).start()
        self._ready.wait(timeout)
        if not self.ready_line:
            ended = self._ended
            code = self.kill()
            what = f"exited ({code})" if ended else f"was not ready within {timeout:.0f} s"
            raise RuntimeError(f"the desk {what}:\n" + "\n".join(self.output[-30:]))
        self.start_s = round(time.perf_counter() - started, 1)  # from the spawn to the ready line

    def _drain(self) -> None:
        for line in self.proc.stdout:
            self.output.append(line.rstrip("\n"))
            if self._log:
                self._log.write(line)
                self._log.flush()
            if not self.ready_line and line.startswith(READY):
                self.ready_line = line.strip()
                self._ready.set()
        self._ended = True
        self._ready.set()
        if self._log:
            self._log.close()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def sqlite_file(self) -> Path:
        """The SQLite log file in data_dir (absent when the desk logs elsewhere, e.g. to PostgreSQL)."""
        return self.data_dir / "madoguchi.sqlite3"

    def rss(self) -> float | None:
        return rss_mb(self.proc.pid)

    def cpu(self) -> float | None:
        return cpu_s(self.proc.pid)

    def console(self):
        """A gradio_client Client logged in to the staff console as `staff`."""
        from gradio_client import Client

        return Client(self.url + "/staff/", auth=self.staff, verbose=False)

    def kill(self) -> int | None:
        """SIGKILL (kill -9): no shutdown at all, as in a crash or an OOM kill. Its exit code."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        return self.proc.wait(10)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL if the desk has not exited within `timeout`. Its exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode
