"""What the bench scripts that start a desk share: where it listens, when it is ready, its memory."""

from __future__ import annotations

import socket

HOST = "127.0.0.1"  # loopback only: these benchmarks never send traffic elsewhere
READY = "madoguchi: ready at"  # the line app.py prints once it serves


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
