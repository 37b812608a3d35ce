"""How FAISS search time, build time, memory and recall scale with the number of passages.

Measures, on synthetic clustered vectors shaped like the engine's (384-d, float32,
L2-normalised, inner product), at each size n:

  flat   IndexFlatIP                                    exact; the recall reference
  hnsw   IndexHNSWFlat(d, 32, METRIC_INNER_PRODUCT)     efConstruction 80; efSearch 64 and 128
  ivf    IndexIVFFlat, nlist = 4*sqrt(n)                nprobe: the smallest with recall@10 >= 0.95

For each: build time (train + add), index size (len of faiss.serialize_index), RSS growth of
this process while building, per-query latency p50/p95 (k=10, one query per search call, the
way the engine searches), and recall@10 against flat. The thread count is set with
faiss.omp_set_num_threads (default: all CPUs) and recorded.

Data: a Gaussian mixture of 1000 centres with uneven weights; the centres themselves gather
around 40 topics, and each centre has its own low-rank (16-d) spread plus a little isotropic
noise; everything is L2-normalised. That gives the neighbourhoods of text embeddings (dense clusters of low
intrinsic dimension) rather than uniform noise, which would make approximate search look
worse than it is. Queries are fresh draws from the same mixture, never base vectors.
The largest base set is drawn once; smaller sizes are its prefixes (also mixture samples).

From the flat figures it reports the switch-over point: the smallest measured size at which
flat's p95 exceeds --target-ms (default 10 ms), and the size where it would reach it,
interpolated linearly between the bracketing sizes (flat search is a linear scan).

    python bench/faiss_scale.py                    # 10k, 100k, 1M (1M HNSW build: many minutes on 2 cores)
    python bench/faiss_scale.py --quick            # 10k, 100k (~3 minutes)
    python bench/faiss_scale.py --sizes 1000000 --merge   # add rows to an existing result file
    python bench/faiss_scale.py --no-ivf --json bench/results/faiss_scale.json

Extra flat-only sizes between them (--flat-sizes) pin down where flat crosses the budget.
Results are written after every index, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import faiss
import numpy as np

REPO = Path(__file__).resolve().parent.parent
DEFAULT_JSON = REPO / "bench" / "results" / "faiss_scale.json"

DIM = 384
TOPICS = 40  # centres gather around topics, so clusters have near and far neighbours
TOPIC_SPREAD = 1.0  # norm of a centre's offset from its topic (before normalising)
CENTRES = 1000
RANK = 16  # intrinsic dimension of each cluster
LOCAL_SPREAD = 0.5  # norm of the low-rank displacement from the centre (before normalising)
NOISE = 0.15  # norm of the isotropic noise
K = 10
HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 32, 80, (64, 128)
NPROBES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
RECALL_TARGET = 0.95
WARMUP = 10
_LIBC = ctypes.CDLL("libc.so.6")


# -- data -----------------------------------------------------------------------------------

class Mixture:
    """The synthetic distribution; `sample(n, rng)` draws n unit vectors from it."""

    def __init__(self, seed: int):
        rng = np.random.default_rng(seed)
        topics = normalise(rng.standard_normal((TOPICS, DIM), dtype=np.float32))
        self.centres = normalise(topics[rng.integers(TOPICS, size=CENTRES)]
                                 + rng.standard_normal((CENTRES, DIM), dtype=np.float32)
                                 * (TOPIC_SPREAD / math.sqrt(DIM)))
        self.weights = rng.lognormal(0.0, 0.7, CENTRES)  # uneven cluster sizes
        self.weights /= self.weights.sum()
        # Per-centre basis of the cluster's spread: RANK random directions, scaled so that
        # the displacement has norm ~LOCAL_SPREAD.
        self.bases = (rng.standard_normal((CENTRES, RANK, DIM), dtype=np.float32)
                      * (LOCAL_SPREAD / math.sqrt(RANK * DIM)))

    def sample(self, n: int, rng: np.random.Generator, chunk: int = 200_000) -> np.ndarray:
        out = np.empty((n, DIM), dtype=np.float32)
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            labels = rng.choice(CENTRES, size=stop - start, p=self.weights)
            block = out[start:stop]
            # Group rows by centre so each cluster's basis is one matmul.
            order = np.argsort(labels, kind="stable")
            bounds = np.searchsorted(labels[order], np.arange(CENTRES + 1))
            for c in range(CENTRES):
                rows = order[bounds[c]:bounds[c + 1]]
                if rows.size:
                    z = rng.standard_normal((rows.size, RANK), dtype=np.float32)
                    block[rows] = self.centres[c] + z @ self.bases[c]
            block += rng.standard_normal(block.shape, dtype=np.float32) * (NOISE / math.sqrt(DIM))
            out[start:stop] = normalise(block)
        return out


def normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# -- measuring ------------------------------------------------------------------------------

def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def timed_queries(index, queries: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """Search one query per call; (ids (nq, K), per-query milliseconds)."""
    for q in queries[:WARMUP]:
        index.search(q[None, :], K)
    ids = np.empty((len(queries), K), dtype=np.int64)
    times = []
    for i, q in enumerate(queries):
        t0 = time.perf_counter()
        _, ids[i] = index.search(q[None, :], K)
        times.append((time.perf_counter() - t0) * 1000)
    return ids, times


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth)]))


def row(n, kind, params, build_s, index, rss_growth, times, recall) -> dict:
    return {"n": n, "index": kind, "params": params, "loadavg_1m": round(os.getloadavg()[0], 2),
            "build_s": round(build_s, 2),
            "index_mb": round(len(faiss.serialize_index(index)) / 2**20, 1),
            "rss_growth_mb": round(rss_growth, 1),
            "p50_ms": round(float(np.percentile(times, 50)), 3),
            "p95_ms": round(float(np.percentile(times, 95)), 3),
            "recall_at_10": round(recall, 4)}


def build(make, data: np.ndarray, train: np.ndarray | None = None):
    """(index, seconds, RSS growth MB) for train (if given) + add."""
    gc.collect()
    _LIBC.malloc_trim(0)  # hand freed heap back to the OS, so growth is not hidden by reuse
    before = rss_mb()
    t0 = time.perf_counter()
    index = make()
    if train is not None:
        index.train(train)
    index.add(data)
    return index, time.perf_counter() - t0, rss_mb() - before


def bench_size(n: int, base: np.ndarray, queries: np.ndarray, args, emit, flat_only: bool = False) -> None:
    data = base[:n]
    say = lambda msg: print(f"  [{n:>9,}] {msg}", flush=True)  # noqa: E731

    say("flat: adding")
    flat, secs, grow = build(lambda: faiss.IndexFlatIP(DIM), data)
    truth, times = timed_queries(flat, queries)
    emit(row(n, "flat", {}, secs, flat, grow, times, 1.0))
    del flat
    if flat_only:
        return

    if not args.no_ivf:
        nlist = int(round(4 * math.sqrt(n)))
        # Bounded training: <= 64 points per centroid, 10 k-means iterations.
        train_n = min(n, 64 * nlist)
        train = data[np.random.default_rng(args.seed + 2).choice(n, train_n, replace=False)]

        def make_ivf():
            ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(DIM), DIM, nlist, faiss.METRIC_INNER_PRODUCT)
            ivf.cp.niter, ivf.cp.max_points_per_centroid = 10, 64
            return ivf

        say(f"ivf: training nlist={nlist} on {train_n:,} points, adding")
        ivf, secs, grow = build(make_ivf, data, train)
        del train
        # Tune nprobe on the query set with batched searches (cheap), then time single queries.
        sweep = {}
        for nprobe in NPROBES:
            if nprobe > nlist:
                break
            ivf.nprobe = nprobe
            sweep[nprobe] = round(recall_at_k(ivf.search(queries, K)[1], truth), 4)
            if sweep[nprobe] >= RECALL_TARGET:
                break
        ivf.nprobe = nprobe
        found, times = timed_queries(ivf, queries)
        emit(row(n, "ivf", {"nlist": nlist, "nprobe": nprobe, "train_points": train_n,
                            "nprobe_sweep_recall": sweep}, secs, ivf, grow, times, recall_at_k(found, truth)))
        del ivf

    def make_hnsw():
        hnsw = faiss.IndexHNSWFlat(DIM, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        return hnsw

    say(f"hnsw: building M={HNSW_M} efConstruction={HNSW_EF_CONSTRUCTION}")
    hnsw, secs, grow = build(make_hnsw, data)
    for ef in HNSW_EF_SEARCH:  # one build, measured once; both efSearch rows share its build figures
        hnsw.hnsw.efSearch = ef
        found, times = timed_queries(hnsw, queries)
        emit(row(n, "hnsw", {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION, "efSearch": ef},
                 secs, hnsw, grow, times, recall_at_k(found, truth)))
    del hnsw


def switch_over(rows: list[dict], target_ms: float) -> dict:
    flat = sorted((r for r in rows if r["index"] == "flat"), key=lambda r: r["n"])
    over = [r for r in flat if r["p95_ms"] > target_ms]
    under = [r for r in flat if r["p95_ms"] <= target_ms and (not over or r["n"] < over[0]["n"])]
    # Flat search is a linear scan: interpolate linearly between the two measured sizes that
    # bracket the target (a straight-line fit over all sizes would be dominated by the largest).
    estimate = None
    if under and over:
        lo, hi = under[-1], over[0]
        estimate = lo["n"] + (hi["n"] - lo["n"]) * (target_ms - lo["p95_ms"]) / (hi["p95_ms"] - lo["p95_ms"])
    elif flat:  # no bracket: extrapolate from the nearest size, proportionally
        ref = flat[-1] if not over else flat[0]
        estimate = ref["n"] * target_ms / ref["p95_ms"]
    return {"target_p95_ms": target_ms,
            "smallest_measured_n_over_target": over[0]["n"] if over else None,
            "largest_measured_n_under_target": under[-1]["n"] if under else None,
            "interpolated_n_at_target": int(round(estimate, -3)) if estimate else None}


def table(rows: list[dict]) -> str:
    head = f"{'n':>9} {'index':<5} {'params':<22} {'build s':>8} {'size MB':>8} {'RSS+ MB':>8} " \
           f"{'p50 ms':>8} {'p95 ms':>8} {'recall@10':>9}"
    lines = [head, "-" * len(head)]
    for r in sorted(rows, key=lambda r: (r["n"], r["index"])):
        p = r["params"]
        params = (f"efSearch={p['efSearch']}" if r["index"] == "hnsw"
                  else f"nlist={p['nlist']} nprobe={p['nprobe']}" if r["index"] == "ivf" else "exact")
        lines.append(f"{r['n']:>9,} {r['index']:<5} {params:<22} {r['build_s']:>8.2f} {r['index_mb']:>8.1f} "
                     f"{r['rss_growth_mb']:>8.1f} {r['p50_ms']:>8.3f} {r['p95_ms']:>8.3f} {r['recall_at_10']:>9.4f}")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated base sizes")
    parser.add_argument("--quick", action="store_true", help="sizes 10000,100000")
    parser.add_argument("--flat-sizes", default="25000,50000,75000,150000,250000,500000",
                        help="extra sizes, up to the largest of --sizes, where only flat is measured "
                             "(cheap; they locate the switch-over)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="faiss OpenMP threads (default: all)")
    parser.add_argument("--no-ivf", action="store_true", help="skip IndexIVFFlat")
    parser.add_argument("--target-ms", type=float, default=10.0, help="flat p95 budget for the switch-over")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--merge", action="store_true",
                        help="keep rows of other sizes from an existing --json file (same seed and data)")
    args = parser.parse_args(argv)
    sizes = [10_000, 100_000] if args.quick else sorted(int(s) for s in args.sizes.split(","))
    flat_sizes = sorted(n for n in (int(s) for s in args.flat_sizes.split(",") if s)
                        if n < max(sizes) and n not in sizes)

    faiss.omp_set_num_threads(args.threads)
    started = time.perf_counter()
    meta = {"faiss": faiss.__version__, "numpy": np.__version__, "python": platform.python_version(),
            "cpus": os.cpu_count(), "omp_threads": faiss.omp_get_max_threads(),
            "data": {"dim": DIM, "topics": TOPICS, "topic_spread": TOPIC_SPREAD, "centres": CENTRES, "rank": RANK, "local_spread": LOCAL_SPREAD,
                     "noise": NOISE, "seed": args.seed, "normalised": True},
            "k": K, "queries": args.queries, "warmup_queries": WARMUP,
            "timing": "one query per index.search call; wall clock (perf_counter)"}

    rows: list[dict] = []
    if args.merge and args.json.exists():
        old = json.loads(args.json.read_text())
        if old["meta"]["data"] != meta["data"]:
            sys.exit(f"--merge: {args.json} was measured on other data ({old['meta']['data']})")
        rows = [r for r in old["rows"] if r["n"] not in sizes + flat_sizes]
        meta["merged_runs"] = old["meta"].get("merged_runs", []) + [
            {k: old["meta"][k] for k in ("sizes", "elapsed_s", "finished") if k in old["meta"]}]

    def emit(r: dict) -> None:
        rows.append(r)
        print(f"  [{r['n']:>9,}] {r['index']}: p50 {r['p50_ms']:.3f} ms, p95 {r['p95_ms']:.3f} ms, "
              f"recall {r['recall_at_10']:.4f}, build {r['build_s']:.1f} s", flush=True)
        write(args.json, meta, rows, args.target_ms, started, sizes, done=False)

    meta["flat_only_sizes"] = flat_sizes
    print(f"faiss {faiss.__version__}, {meta['omp_threads']} OpenMP threads; sizes {sizes}, "
          f"flat only {flat_sizes}", flush=True)
    t0 = time.perf_counter()
    mixture = Mixture(args.seed)
    base = mixture.sample(max(sizes), np.random.default_rng(args.seed + 1))
    queries = mixture.sample(args.queries, np.random.default_rng(args.seed + 99))
    meta["data_gen_s"] = round(time.perf_counter() - t0, 1)
    print(f"data: {len(base):,} base + {len(queries)} queries in {meta['data_gen_s']} s", flush=True)

    for n in sorted(sizes + flat_sizes):
        bench_size(n, base, queries, args, emit, flat_only=n in flat_sizes)

    write(args.json, meta, rows, args.target_ms, started, sizes, done=True)
    print()
    print(table(rows))
    s = switch_over(rows, args.target_ms)
    print(f"\nflat p95 > {args.target_ms:g} ms first at n = {s['smallest_measured_n_over_target']} (measured sizes); "
          f"interpolated crossing: n ~ {s['interpolated_n_at_target']}")
    print(f"total {time.perf_counter() - started:.0f} s; results in {args.json}")


def write(path: Path, meta: dict, rows: list[dict], target_ms: float, started: float, sizes, done: bool) -> None:
    meta = dict(meta, sizes=sizes, elapsed_s=round(time.perf_counter() - started, 1), finished=done,
                loadavg_1m_at_write=round(os.getloadavg()[0], 2))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"meta": meta, "rows": sorted(rows, key=lambda r: (r["n"], r["index"])),
                               "switch_over": switch_over(rows, target_ms)}, indent=1, ensure_ascii=False))
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
