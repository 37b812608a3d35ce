"""Benchmark the engine: search time against the bare query encoder, cold start, build time, memory.

All figures come from one run on this machine, so their ratios are comparable even when the
machine is noisy. Needs a built index (python -m chatbot build) unless --index-dir is given.

    python bench/search.py                 # ~1 minute
    python bench/search.py --cold-build    # also a build with an empty model cache (~1 minute more)
    python bench/search.py --json out.json    (default: bench/results/search.json)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from chatbot import config, embed, evaluation, index, search  # noqa: E402
from chatbot.text import normalise  # noqa: E402

QUERIES = REPO / "eval" / "queries.jsonl"


def percentiles(values: list[float]) -> dict:
    return {"p50": round(float(np.percentile(values, 50)), 2), "p95": round(float(np.percentile(values, 95)), 2)}


def in_process(rounds: int) -> dict:
    """Per query, the bare encoder and the full search, interleaved so both see the same load."""
    encoder = embed.load_encoder(config.model_name())
    searcher = search.Searcher(index.load(config.index_dir(), model_id=encoder.model_id), encoder,
                               bank_file=config.bank_file())  # as the desk runs it: the bank file stat()ed
    questions = [q.query for q in evaluation.load_queries([QUERIES]) if not q.context]
    for q in questions[:10]:  # warm-up: thread pools, caches
        searcher.search(q)
    encode_ms, search_ms = [], []
    for _ in range(rounds):
        for q in questions:
            t = time.perf_counter()
            encoder.encode_queries([normalise(q)])
            encode_ms.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            searcher.search(q)
            search_ms.append((time.perf_counter() - t) * 1000)
    enc, full = percentiles(encode_ms), percentiles(search_ms)
    return {"questions": len(questions) * rounds, "encoder_ms": enc, "search_ms": full,
            "ratio_p50": round(full["p50"] / enc["p50"], 3), "ratio_p95": round(full["p95"] / enc["p95"], 3),
            "runtime": encoder.runtime, "model": encoder.model_id,
            "rss_mb_after": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def cold_start(runs: int) -> dict:
    """A new `ask` process with a built index, from exec to its printed answer."""
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "chatbot", "ask", "INPITの相談窓口はどこ？", "--json"],
                              cwd=REPO, capture_output=True, check=True)
        times.append(time.perf_counter() - t)
        json.loads(done.stdout)
    return {"runs": runs, "seconds": [round(x, 2) for x in times], "median_s": round(float(np.median(times)), 2)}


def build_time(cold: bool) -> dict:
    """`python -m chatbot build` into a new index directory; cold = with an empty model cache."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "MADOGUCHI_INDEX": str(Path(tmp) / "index")}
        if cold:
            env["MADOGUCHI_CACHE"] = str(Path(tmp) / "cache")
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "chatbot", "build"], cwd=REPO, env=env, check=True,
                       capture_output=True)
        return {"model_cache": "empty" if cold else "warm", "seconds": round(time.perf_counter() - t, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="passes over the eval questions")
    parser.add_argument("--cold-runs", type=int, default=3)
    parser.add_argument("--cold-build", action="store_true", help="also build with an empty model cache")
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "search.json",
                        help="write the figures here too (default: bench/results/search.json)")
    args = parser.parse_args()

    figures = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count(),
               "load_average": [round(x, 2) for x in os.getloadavg()]}
    figures["search"] = in_process(args.rounds)
    figures["cold_start_ask"] = cold_start(args.cold_runs)
    figures["build"] = [build_time(cold=False)] + ([build_time(cold=True)] if args.cold_build else [])

    s = figures["search"]
    print(f"{'per query':28}{'p50 ms':>10}{'p95 ms':>10}")
    print(f"{'encoder only (' + s['runtime'] + ')':28}{s['encoder_ms']['p50']:>10}{s['encoder_ms']['p95']:>10}")
    print(f"{'full search':28}{s['search_ms']['p50']:>10}{s['search_ms']['p95']:>10}")
    print(f"{'ratio search / encoder':28}{s['ratio_p50']:>10}{s['ratio_p95']:>10}")
    print(f"cold start of `ask` (median of {args.cold_runs}): {figures['cold_start_ask']['median_s']} s")
    for b in figures["build"]:
        print(f"index build, {b['model_cache']} model cache: {b['seconds']} s")
    print(f"max RSS of the benchmark process: {s['rss_mb_after']} MB")
    text = json.dumps(figures, ensure_ascii=False, indent=1)
    print(text)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
