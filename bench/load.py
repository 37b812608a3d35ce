"""Load on the running desk's /search: C concurrent clients × Q questions each, 0 errors expected,
latency p50/p95/max, the desk's RSS before/during/after, and every answered call's row in the log.
Issue 8.

Starts the desk itself on 127.0.0.1 (`python app.py --port <free> --data-dir <tmp>`, MADOGUCHI_INDEX
set to --index-dir, or to an index built first in a temporary directory with the desk's encoder),
waits for its "madoguchi: ready at" line, sends a few warm-up calls, then runs C threads, each
with its own gradio_client Client, each asking its Q questions in turn:

    Client(url).predict(question, 5, "", api_name="/search")

Questions: eval/queries.jsonl (in and out of scope) in a per-client shuffled order, each made
unique with a suffix so that its row in the log can be found. RSS (VmRSS of the desk's PID) is
read before, every second during, and after the run (also after a short idle). Memory is judged
on the during samples: the last quarter of the run against the first quarter. The desk is stopped
by its PID at the end, also on failure. Only 127.0.0.1 is contacted.

    python bench/load.py                      # 20 clients × 200 questions, bench/results/load.json
    python bench/load.py --clients 4 --questions 20
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
QUERIES = REPO / "eval" / "queries.jsonl"
DEFAULT_JSON = REPO / "bench" / "results" / "load.json"

from desk_probe import HOST, DeskProcess  # noqa: E402  (beside this script)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--questions", type=int, default=200, help="questions per client")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--index-dir", type=Path, help="a built index (default: build one in a temporary directory)")
    parser.add_argument("--max-growth-mb", type=float, default=40.0,
                        help="RSS growth (last quarter vs first quarter of the run) above which the run fails")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args(argv)
    import gradio_client
    from gradio_client import Client

    base = [json.loads(line)["query"] for line in QUERIES.read_text(encoding="utf-8").splitlines() if line.strip()]
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="madoguchi-load-") as tmp:
        tmp = Path(tmp)
        index_dir = args.index_dir
        if index_dir is None:
            from chatbot import config, embed, index

            index_dir = tmp / "index"
            index.build(config.corpus_dir(), index_dir, embed.load_encoder(), progress=False)
        desk = DeskProcess(index_dir, tmp / "data", rate_limit=0, timeout=300)  # every client is 127.0.0.1
        print(f"{desk.ready_line} (pid {desk.proc.pid}, {desk.start_s} s)", flush=True)
        samples: list[tuple[float, float]] = []
        try:
            warm = Client(desk.url, verbose=False)
            for q in base[: args.warmup]:
                warm.predict(q, 5, "", api_name="/search")
            rss_before = desk.rss()

            clients = [Client(desk.url, verbose=False) for _ in range(args.clients)]
            latencies: list[float] = []
            errors: list[str] = []
            asked: list[str] = []
            lock = threading.Lock()
            barrier = threading.Barrier(args.clients + 1)
            running = threading.Event()
            running.set()

            def client(c: int, conn) -> None:
                rng = random.Random(args.seed * 1000 + c)
                mine = [base[rng.randrange(len(base))] for _ in range(args.questions)]
                barrier.wait()
                for i, q in enumerate(mine):
                    question = f"{q} [c{c}-{i}]"
                    t0 = time.perf_counter()
                    try:
                        out = conn.predict(question, 5, "", api_name="/search")
                        bad = None if isinstance(out, dict) and "results" in out and "error" not in out \
                            else f"unexpected answer: {str(out)[:200]}"
                    except Exception as e:  # noqa: BLE001 - every failure counts
                        bad = f"{type(e).__name__}: {e}"[:300]
                    ms = (time.perf_counter() - t0) * 1000
                    with lock:
                        if bad:
                            errors.append(bad)
                        else:
                            latencies.append(ms)
                            asked.append(question)

            def sample() -> None:
                while running.is_set():
                    value = desk.rss()
                    if value is not None:
                        samples.append((round(time.perf_counter() - t_start, 1), value))
                    time.sleep(1.0)

            threads = [threading.Thread(target=client, args=(c, conn)) for c, conn in enumerate(clients)]
            for t in threads:
                t.start()
            barrier.wait()
            t_start = time.perf_counter()
            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t_start
            running.clear()
            sampler.join(5)
            rss_after = desk.rss()
            time.sleep(5)
            rss_idle = desk.rss()
            with sqlite3.connect(tmp / "data" / "madoguchi.sqlite3") as db:
                logged = {q for (q,) in db.execute("SELECT question FROM questions WHERE channel = 'api'")}
            missing = [q for q in asked if q not in logged]
            log_errors = [line for line in desk.output if "記録できませんでした" in line]
            tracebacks = sum("Traceback" in line for line in desk.output)
        finally:
            rc = desk.stop()

    lat = np.array(latencies) if latencies else np.array([np.nan])
    during = [v for _, v in samples]
    quarter = max(1, len(during) // 4)
    first_q, last_q = float(np.mean(during[:quarter])), float(np.mean(during[-quarter:]))
    growth = round(last_q - first_q, 1)
    total = args.clients * args.questions
    result = {
        "clients": args.clients, "questions_per_client": args.questions, "requests": total,
        "ok": len(latencies), "errors": len(errors), "error_samples": sorted(set(errors))[:5],
        "wall_s": round(wall, 1), "throughput_rps": round(len(latencies) / wall, 2),
        "latency_ms": {"p50": round(float(np.percentile(lat, 50)), 1), "p95": round(float(np.percentile(lat, 95)), 1),
                       "p99": round(float(np.percentile(lat, 99)), 1), "max": round(float(np.max(lat)), 1),
                       "mean": round(float(np.mean(lat)), 1)},
        "desk_rss_mb": {"before": rss_before, "during_min": min(during), "during_max": max(during),
                        "during_first_quarter_mean": round(first_q, 1), "during_last_quarter_mean": round(last_q, 1),
                        "growth_last_vs_first_quarter": growth, "after": rss_after, "after_5s_idle": rss_idle,
                        "samples": samples},
        "log": {"answered": len(asked), "rows_missing": len(missing), "missing_samples": missing[:5],
                "write_errors": len(log_errors)},
        "desk": {"start_s": desk.start_s, "exit_code": rc, "tracebacks_on_console": tracebacks},
        "meta": {"python": platform.python_version(), "gradio_client": gradio_client.__version__,
                 "cpus": os.cpu_count(), "host": HOST, "warmup": args.warmup,
                 "questions_file": str(QUERIES.relative_to(REPO)), "elapsed_s": round(time.perf_counter() - began, 1),
                 "latency": "client side, per predict() call (HTTP + Gradio queue + search + log)"},
    }
    ok = (not errors and not missing and not log_errors and not tracebacks and growth <= args.max_growth_mb)
    result["passed"] = ok
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, ensure_ascii=False, indent=1))
    print(f"{args.clients} clients × {args.questions} questions = {total} requests in {result['wall_s']} s "
          f"({result['throughput_rps']} req/s): {len(errors)} errors; latency p50 {result['latency_ms']['p50']} ms, "
          f"p95 {result['latency_ms']['p95']} ms, max {result['latency_ms']['max']} ms")
    print(f"desk RSS: {rss_before} MB before, {min(during)}–{max(during)} MB during "
          f"(first quarter {first_q:.1f}, last quarter {last_q:.1f}: {growth:+.1f} MB), {rss_after} MB after, "
          f"{rss_idle} MB after 5 s idle")
    print(f"log: {len(asked)} answered, {len(missing)} without a row, {len(log_errors)} write errors; "
          f"{tracebacks} tracebacks on the desk console; {'PASSED' if ok else 'FAILED'}; results in {args.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
