"""Load on the desk's pinned /search endpoint: throughput and latency under 1, 4 and 8 clients.

Starts the desk itself on 127.0.0.1 (`python app.py --port <free> --data-dir <tmp>`, with
MADOGUCHI_INDEX set to an index that is already built: default ./index, built first with
`python -m chatbot build` when it has no CURRENT), waits for its "madoguchi: ready at" line,
then at each concurrency level N runs N threads, each with its own gradio_client Client, that
share a fixed number of requests (default 100 per level):

    Client(url).predict(question, top_k, context, api_name="/search")

Questions are the Japanese queries of eval/queries.jsonl, taken in a shuffled round-robin.
Per level: wall time, throughput (req/s), latency p50/p95/max per request (client side,
HTTP + Gradio queue + search), errors (exceptions, or an answer carrying "error"), the desk's
CPU time per request, and the 1-minute load average (the clients share the machine with the
desk, and so does any other work). The desk's RSS (VmRSS of its PID) is read before the
first level and after each one. The desk is stopped
by its PID at the end, also on failure. Only 127.0.0.1 is ever contacted.

    python bench/http_load.py                          # levels 1,4,8; 100 requests each (~1-2 minutes)
    python bench/http_load.py --levels 1,4,8,16 --requests 200
    python bench/http_load.py --index-dir /path/to/index --json bench/results/http_load.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
QUERIES = REPO / "eval" / "queries.jsonl"
DEFAULT_JSON = REPO / "bench" / "results" / "http_load.json"

from desk_probe import DeskProcess, desk_env  # noqa: E402  (beside this script)


def ensure_index(index_dir: Path, env: dict) -> dict:
    """Build the index when index_dir has none; returns what was done."""
    if (index_dir / "CURRENT").exists():
        return {"built": False}
    print(f"no index in {index_dir}: running python -m chatbot build", flush=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "chatbot", "build"], cwd=REPO, env=env, check=True)
    return {"built": True, "build_s": round(time.perf_counter() - t0, 1)}


def run_level(url: str, clients: int, requests: int, questions: list[str], top_k: int) -> dict:
    """`requests` calls to /search from `clients` threads, one gradio Client each."""
    from gradio_client import Client

    work: queue.Queue[str] = queue.Queue()
    for i in range(requests):
        work.put(questions[i % len(questions)])
    latencies: list[float] = []
    errors: list[str] = []
    abstained = [0]
    lock = threading.Lock()
    # Connect every client before the clock starts (Client() fetches the app's config).
    made = [Client(url, verbose=False) for _ in range(clients)]
    barrier = threading.Barrier(clients + 1)

    def worker(client) -> None:
        barrier.wait()
        while True:
            try:
                question = work.get_nowait()
            except queue.Empty:
                return
            t0 = time.perf_counter()
            try:
                out = client.predict(question, top_k, "", api_name="/search")
                bad = f"answer error: {out['error']}" if isinstance(out, dict) and out.get("error") else (
                    None if isinstance(out, dict) and "results" in out else f"unexpected answer: {str(out)[:200]}")
            except Exception as e:  # noqa: BLE001 - every failure counts as an error, the run goes on
                bad = f"{type(e).__name__}: {e}"[:300]
            ms = (time.perf_counter() - t0) * 1000
            with lock:
                (errors.append(bad) if bad else latencies.append(ms))
                abstained[0] += bool(not bad and out.get("abstained"))

    threads = [threading.Thread(target=worker, args=(c,)) for c in made]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    for c in made:
        try:
            c.close()
        except Exception:  # noqa: BLE001 - older clients have no close()
            pass
    lat = np.array(latencies) if latencies else np.array([np.nan])
    return {"clients": clients, "requests": requests, "ok": len(latencies), "errors": len(errors),
            "abstained": abstained[0],
            "error_samples": sorted(set(errors))[:5], "wall_s": round(wall, 2),
            "throughput_rps": round(len(latencies) / wall, 2),
            "p50_ms": round(float(np.percentile(lat, 50)), 1), "p95_ms": round(float(np.percentile(lat, 95)), 1),
            "max_ms": round(float(np.max(lat)), 1), "mean_ms": round(float(np.mean(lat)), 1)}


def table(levels: list[dict]) -> str:
    head = f"{'clients':>7} {'requests':>8} {'ok':>5} {'errors':>6} {'wall s':>7} {'req/s':>7} " \
           f"{'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'RSS MB':>8} {'CPU ms/req':>10} {'load':>5}"
    lines = [head, "-" * len(head)]
    for r in levels:
        lines.append(f"{r['clients']:>7} {r['requests']:>8} {r['ok']:>5} {r['errors']:>6} {r['wall_s']:>7.2f} "
                     f"{r['throughput_rps']:>7.2f} {r['p50_ms']:>8.1f} {r['p95_ms']:>8.1f} {r['max_ms']:>8.1f} "
                     f"{r['desk_rss_mb_after'] or float('nan'):>8.1f} "
                     f"{r.get('desk_cpu_ms_per_request', float('nan')):>10.1f} {r['loadavg_1m_before']:>5.2f}")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--levels", default="1,4,8", help="concurrent clients per level")
    parser.add_argument("--requests", type=int, default=100, help="requests per level (shared by its clients)")
    parser.add_argument("--warmup", type=int, default=5, help="unmeasured requests before the first level")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--index-dir", type=Path, default=Path(os.environ.get("MADOGUCHI_INDEX", REPO / "index")))
    parser.add_argument("--start-timeout", type=float, default=300.0, help="seconds to wait for the ready line")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",")]
    started = time.perf_counter()

    questions = [json.loads(line)["query"] for line in QUERIES.read_text(encoding="utf-8").splitlines() if line.strip()]
    random.Random(args.seed).shuffle(questions)

    index_dir = args.index_dir.resolve()
    env = desk_env(index_dir)  # the desk logs into the temporary --data-dir only
    index_info = ensure_index(index_dir, env)

    import gradio_client

    with tempfile.TemporaryDirectory(prefix="madoguchi-load-") as tmp:
        desk = DeskProcess(["--data-dir", tmp], env, log=Path(tmp) / "desk.log", timeout=args.start_timeout)
        results: dict = {}
        try:
            print(f"{desk.ready_line}  (pid {desk.proc.pid}, {desk.start_s} s)", flush=True)
            rss_start = desk.rss()
            run_level(desk.url, 1, args.warmup, questions, args.top_k)  # first calls load lazy state
            rss_before = desk.rss()
            out = []
            for n in levels:
                load, cpu = os.getloadavg()[0], desk.cpu()
                r = run_level(desk.url, n, args.requests, questions, args.top_k)
                r["desk_rss_mb_after"] = desk.rss()
                # The desk's own CPU per answered request: steadier than wall time on a busy machine.
                if cpu is not None and r["ok"]:
                    r["desk_cpu_ms_per_request"] = round((desk.cpu() - cpu) * 1000 / r["ok"], 1)
                r["loadavg_1m_before"] = round(load, 2)
                out.append(r)
                print(f"  {n} clients: {r['throughput_rps']} req/s, p50 {r['p50_ms']} ms, p95 {r['p95_ms']} ms, "
                      f"{r['errors']} errors", flush=True)
            results = {"levels": out,
                       "desk_rss_mb": {"at_ready": rss_start, "before": rss_before, "after": desk.rss()}}
        finally:
            rc = desk.stop()
        results["desk"] = {"pid": desk.proc.pid, "url": desk.url, "start_s": desk.start_s, "exit_code": rc,
                           "ready_line": desk.ready_line}

    meta = {"python": platform.python_version(), "gradio_client": gradio_client.__version__,
            "cpus": os.cpu_count(), "index_dir": str(index_dir), "index": index_info,
            "requests_per_level": args.requests, "warmup_requests": args.warmup, "top_k": args.top_k,
            "questions": len(questions), "questions_file": str(QUERIES.relative_to(REPO)),
            "latency": "client side, per predict() call (HTTP + Gradio queue + search)",
            "elapsed_s": round(time.perf_counter() - started, 1)}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"meta": meta, **results}, indent=1, ensure_ascii=False))
    print()
    print(table(results["levels"]))
    rss = results["desk_rss_mb"]
    print(f"\ndesk RSS: {rss['before']} MB before, {rss['after']} MB after; desk start {desk.start_s} s; "
          f"total {meta['elapsed_s']} s; results in {args.json}")


if __name__ == "__main__":
    main()
