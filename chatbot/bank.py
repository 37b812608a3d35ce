"""The question bank: labelled questions (programme key → question), matched question to question.

Passage retrieval compares a question with the report's text; the bank compares it with
questions people really asked of each programme, the classical FAQ-retrieval signal (query–
question similarity; Sakata et al., SIGIR 2019). Two sources:

- the corpus profiles' `asks:` lines, embedded with the index (they change with the corpus);
- a JSONL file that staff grow (`corpus/bank.jsonl` unless MADOGUCHI_BANK says otherwise), one
  {"key", "question", "source", "by", "at"} object a line, through `python -m chatbot bank
  add|remove|list|import|export` or the staff console. A search notices the file changed and
  embeds only the new questions (their vectors are cached per model under MADOGUCHI_CACHE), so
  a new labelled question takes effect at once, with no rebuild.

Questions are never shown: an answer is still a passage of the corpus.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from chatbot import text
from chatbot.errors import MadoguchiError

MAX_QUESTION_CHARS = 200  # like corpus.MAX_ASK_CHARS: a question, not a passage


class BankError(MadoguchiError):
    pass


@dataclass(frozen=True)
class Entry:
    key: str
    question: str
    source: str = "staff"  # "corpus" (an asks: line), "staff", "import", "console"
    by: str = ""  # who added it (a staff name), if known
    at: str = ""  # when (UTC, ISO 8601)


def from_corpus(programmes) -> list[Entry]:
    return [Entry(p.key, q, "corpus") for p in programmes for q in p.asks]


def read(path: Path, known_keys: set[str] | None = None) -> list[Entry]:
    """The bank file's entries (none when it does not exist); a bad line is an error with file:line."""
    path = Path(path)
    if not path.exists():
        return []
    entries = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            entry = _entry(item, known_keys)
        except (ValueError, TypeError, AttributeError) as e:
            raise BankError(f"{path}:{lineno}: {e}") from None
        entries.append(entry)
    return entries


def _entry(item: dict, known_keys: set[str] | None, source: str = "") -> Entry:
    if not isinstance(item, dict):
        raise ValueError('not a {"key", "question"} object')
    key, question = item.get("key"), item.get("question")
    if not isinstance(key, str) or not isinstance(question, str):
        raise ValueError('"key" and "question" must be strings')
    question = text.normalise(question)
    if not question or len(question) > MAX_QUESTION_CHARS:
        raise ValueError(f"a question must be 1 to {MAX_QUESTION_CHARS} characters")
    if known_keys is not None and key not in known_keys:
        raise ValueError(f"unknown programme key {key!r} (see python -m chatbot list)")
    return Entry(key, question, source or str(item.get("source") or "staff"), str(item.get("by") or ""),
                 str(item.get("at") or ""))


def add(path: Path, items: list[dict], known_keys: set[str], *, source: str = "staff", by: str = "") -> dict:
    """Add labelled questions; returns {"added", "unchanged", "relabelled"}.

    A question already in the bank with the same key is left alone; with another key it is
    relabelled (the newest label wins: staff correct each other). Under a lock, written to a
    temporary file and renamed, so two desks adding at once lose nothing and a crash leaves
    the old file."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    new = []
    for n, item in enumerate(items, start=1):
        try:
            new.append(_entry({**item, "at": item.get("at") or now, "by": item.get("by") or by}, known_keys, source))
        except (ValueError, TypeError, AttributeError) as e:
            raise BankError(f"question {n}: {e}" if len(items) > 1 else str(e)) from None
    with _locked(path):
        entries = read(path)
        where = {e.question: i for i, e in enumerate(entries)}
        counts = {"added": 0, "unchanged": 0, "relabelled": 0}
        for entry in new:
            i = where.get(entry.question)
            if i is None:
                where[entry.question] = len(entries)
                entries.append(entry)
                counts["added"] += 1
            elif entries[i].key == entry.key:
                counts["unchanged"] += 1
            else:
                entries[i] = entry
                counts["relabelled"] += 1
        _write(path, entries)
    return counts


def remove(path: Path, question: str) -> int:
    """Remove a question (as normalised) from the bank file; returns how many lines went."""
    question = text.normalise(question)
    with _locked(path):
        entries = read(path)
        kept = [e for e in entries if e.question != question]
        _write(path, kept)
    return len(entries) - len(kept)


def dumps(entries: list[Entry]) -> str:
    return "".join(json.dumps(asdict(e), ensure_ascii=False) + "\n" for e in entries)


def _write(path: Path, entries: list[Entry]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(dumps(entries))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class _locked:
    """An exclusive lock on <bank>.lock for a read-modify-write of the bank file."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def __enter__(self):
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(self.path.with_name(self.path.name + ".lock"), "a")
        except OSError as e:
            raise BankError(f"cannot write the question bank {self.path}: {e.strerror}") from e
        fcntl.flock(self.file, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        self.file.close()


# -- vectors -------------------------------------------------------------------------------------

class Vectors:
    """Question vectors of one model, cached on disk by the question's SHA-1, so a desk that
    reloads the bank embeds only the questions it has not seen."""

    def __init__(self, encoder, cache_file: Path | None):
        self.encoder = encoder
        self.cache_file = cache_file
        self.known: dict[str, np.ndarray] = {}
        if cache_file is not None and cache_file.exists():
            try:
                with np.load(cache_file) as saved:
                    self.known = dict(zip(saved["ids"].tolist(), saved["vectors"].astype(np.float32)))
            except (OSError, ValueError, KeyError):
                self.known = {}  # a damaged cache is only slower: everything is embedded again

    def of(self, questions: list[str]) -> np.ndarray:
        ids = [_digest(q) for q in questions]
        missing = list(dict.fromkeys(q for q, i in zip(questions, ids) if i not in self.known))
        if missing:
            vectors = self.encoder.encode_queries(missing).astype(np.float32)
            self.known.update(zip((_digest(q) for q in missing), vectors))
            self._save()
        dim = self.encoder.dim
        return np.stack([self.known[i] for i in ids]) if ids else np.zeros((0, dim), dtype=np.float32)

    def _save(self) -> None:
        if self.cache_file is None:
            return
        try:
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.cache_file.with_name(f".{self.cache_file.stem}.{os.getpid()}.tmp.npz")
            np.savez(tmp, ids=np.array(list(self.known)), vectors=np.stack(list(self.known.values())))
            os.replace(tmp, self.cache_file)
        except OSError:
            pass  # an unwritable cache only costs time at the next start


def _digest(question: str) -> str:
    return hashlib.sha1(question.encode("utf-8")).hexdigest()


@dataclass
class Loaded:
    """The bank as the search uses it: each question's programme slot and vector."""

    entries: list[Entry]
    slots: np.ndarray  # (n,) programme index in the searcher's key order
    vectors: np.ndarray  # (n, dim), L2-normalised
    stamp: tuple  # the bank file's (mtime_ns, size) when read, to notice changes

    def __post_init__(self):
        self.staff = np.array([e.source != "corpus" for e in self.entries], dtype=bool)  # the bank file's

    def nearest(self, vector: np.ndarray, n_programmes: int, same: float) -> tuple[np.ndarray, np.ndarray]:
        """Per programme, the cosine of its nearest bank question (-1 without any), and whether a
        question of the bank file (not a corpus ask) is `vector`'s question asked again (cosine
        >= same): a label staff gave to this very question."""
        best = np.full(n_programmes, -1.0, dtype=np.float64)
        relabelled = np.zeros(n_programmes, dtype=bool)
        if len(self.entries):
            sims = (self.vectors @ vector).astype(np.float64)
            np.maximum.at(best, self.slots, sims)
            relabelled[self.slots[self.staff & (sims >= same)]] = True
        return best, relabelled


def stamp(path: Path | None) -> tuple:
    try:
        st = os.stat(path) if path is not None else None
    except OSError:
        return ()
    return (st.st_mtime_ns, st.st_size) if st else ()
