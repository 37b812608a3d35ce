"""Staff accounts for the console: `python -m chatbot staff add|remove|list`.

Accounts live in the log's database (table staff_accounts), so every desk on one PostgreSQL
sees the same staff. Passwords are kept only as scrypt hashes (hashlib, RFC 7914) with a random
salt, and compared in constant time. After MAX_FAILURES wrong passwords in a row an account
is locked for LOCK_MINUTES, whatever is typed next: guessing a password takes years, not a night.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import threading
from datetime import datetime, timedelta, timezone

from chatbot.errors import MadoguchiError

SCRYPT = {"n": 2**14, "r": 8, "p": 1}  # ~50 ms and 16 MB per check on this machine
MIN_PASSWORD = 10
MAX_FAILURES = 5
LOCK_MINUTES = 15
NAME = re.compile(r"^[A-Za-z0-9._@-]{2,40}$")


class AccountError(MadoguchiError):
    pass


def hash_password(password: str) -> str:
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, **SCRYPT, dklen=32)
    return "scrypt${n}${r}${p}$".format(**SCRYPT) + "$".join(
        base64.b64encode(part).decode("ascii") for part in (salt, digest))


def check_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        got = hashlib.scrypt(password.encode("utf-8"), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                             dklen=32)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, base64.b64decode(digest))


class Accounts:
    """The staff accounts of one log database (a chatbot.store backend, migrated)."""

    def __init__(self, backend):
        self.backend = backend
        self._sql = lambda statement: statement.replace("?", backend.mark)
        self._lock = threading.Lock()

    def add(self, name: str, password: str) -> None:
        """Create the account, or set a new password (which also unlocks it)."""
        if not NAME.match(name or ""):
            raise AccountError(f"a staff name is 2-40 letters, digits or . _ @ -, got {name!r}")
        if len(password) < MIN_PASSWORD:
            raise AccountError(f"the password must have at least {MIN_PASSWORD} characters")
        self._run("INSERT INTO staff_accounts (name, hash, created_at, failures) VALUES (?, ?, ?, 0)"
                  " ON CONFLICT (name) DO UPDATE SET hash = excluded.hash, failures = 0, locked_until = NULL",
                  (name, hash_password(password), _now().isoformat(timespec="seconds")))

    def remove(self, name: str) -> bool:
        if not self._run("SELECT name FROM staff_accounts WHERE name = ?", (name,)):
            return False
        self._run("DELETE FROM staff_accounts WHERE name = ?", (name,))
        return True

    def list(self) -> list[dict]:
        rows = self._run("SELECT name, created_at, failures, locked_until FROM staff_accounts ORDER BY name")
        return [{"name": n, "created_at": c, "failures": f, "locked": _locked(u)} for n, c, f, u in rows]

    def any(self) -> bool:
        return bool(self._run("SELECT name FROM staff_accounts LIMIT 1"))

    def login(self, name: str, password: str) -> bool:
        """True for the right password of an unlocked account. Never says which part was wrong,
        not even by time: every attempt costs one scrypt check. One login at a time per desk, and
        the failure count is raised in the database (+1), so a burst of guesses cannot outrun it."""
        with self._lock:
            rows = self._run("SELECT hash, locked_until FROM staff_accounts WHERE name = ?", (name,))
            stored, locked_until = rows[0] if rows else (_DUMMY, None)
            right = check_password(password, stored)
            if not rows or _locked(locked_until):
                return False
            if right:
                self._run("UPDATE staff_accounts SET failures = 0, locked_until = NULL WHERE name = ?", (name,))
                return True
            self._run("UPDATE staff_accounts SET failures = failures + 1 WHERE name = ?", (name,))
            failures = self._run("SELECT failures FROM staff_accounts WHERE name = ?", (name,))
            if failures and failures[0][0] >= MAX_FAILURES:
                until = (_now() + timedelta(minutes=LOCK_MINUTES)).isoformat(timespec="seconds")
                self._run("UPDATE staff_accounts SET failures = 0, locked_until = ? WHERE name = ?", (until, name))
            return False

    def valid(self, name: str) -> bool:
        """Does the account still exist, unlocked? (A removed or locked account's session ends.)"""
        rows = self._run("SELECT locked_until FROM staff_accounts WHERE name = ?", (name,))
        return bool(rows) and not _locked(rows[0][0])

    def _run(self, statement: str, params: tuple = ()) -> list[tuple]:
        return self.backend.execute(self._sql(statement), params)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _locked(until: str | None) -> bool:
    return bool(until) and datetime.fromisoformat(until) > _now()


_DUMMY = hash_password("-" * MIN_PASSWORD)  # checked for an unknown name: the same time as a real one
