"""Load on the desk over HTTP: the JSON API /api/search and the pinned Gradio /search, against the
ceiling this machine allows, all measured in one run.

1. The ceiling: one question's cost on one core, measured in a child process pinned to CPU 0
   (`taskset -c 0`): the searcher as the desk runs it (one ONNX thread), search + JSON, questions
   one after another. ceiling = CPUs ÷ that cost. A second child, on every CPU, measures the
   choice the desk made (service.Pool): one one-thread search per CPU at once, versus one search
   at a time with ONNX on every CPU.
2. The desk itself (`python app.py` on 127.0.0.1, a free port, a temporary data directory, no
   rate limit), then, per level of N clients for D seconds each: N keep-alive connections, each
   sending its next request as soon as the last is answered (a closed loop, as wrk does), from an
   asyncio client in this process. Per level: requests/s and its ratio to the ceiling, latency
   p50/p95/p99/max of the answered ones, 503s (refused when the desk's line is full) and the
   slowest of them, other errors, connection errors, and the desk's RSS.
3. With --browser (default when /usr/bin/chromium exists): one more 8-client API level, during
   which a visitor asks in the chat in headless Chromium; the time from Enter to the answer on
   screen (after the plain levels, so that Chromium's CPU does not count against them).

Questions are the Japanese queries of eval/queries.jsonl in a shuffled round-robin. Only 127.0.0.1
is contacted. Figures go to stdout and bench/results/http_load.json.

    python bench/http_load.py                        # API 1,8,50 clients, Gradio 1,8, Chromium: ~3 minutes
    python bench/http_load.py --seconds 5 --api-levels 8 --gradio-levels ""
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
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
CHROMIUM = "/usr/bin/chromium"

from desk_probe import DeskProcess, desk_env  # noqa: E402  (beside this script)


def questions(seed: int) -> list[str]:
    found = [json.loads(line) for line in QUERIES.read_text(encoding="utf-8").splitlines() if line.strip()]
    out = [q["query"] for q in found if not q.get("context")]
    random.Random(seed).shuffle(out)
    return out


# -- 1. the ceiling ------------------------------------------------------------------------------


def engine_cost(n: int, seed: int, compare: bool) -> dict:
    """Run in a child (--engine-cost): one question's cost on the CPUs this process may use, or,
    with `compare`, questions a second on all of them both ways the desk could search."""
    sys.path.insert(0, str(REPO))
    from concurrent.futures import ThreadPoolExecutor

    from chatbot import search

    asked = questions(seed)
    work = [asked[i % len(asked)] for i in range(n)]

    def rate(searcher, threads: int) -> float:
        answer = lambda q: json.dumps(searcher.search(q).to_json(), ensure_ascii=False)  # noqa: E731
        for q in asked[:20]:  # warm-up: first calls load lazy state
            answer(q)
        with ThreadPoolExecutor(threads) as pool:
            t0 = time.perf_counter()
            list(pool.map(answer, work))
            return n / (time.perf_counter() - t0)

    one = search.open_searcher(threads=1)  # as the desk runs it
    if not compare:
        c0 = time.process_time()
        qps = rate(one, 1)
        return {"ms": round(1000 / qps, 2), "cpu_ms": round((time.process_time() - c0) * 1000 / (n + 20), 2),
                "questions": n}
    cpus = len(os.sched_getaffinity(0))
    return {"cpus": cpus, "one_thread_searches_in_parallel_qps": round(rate(one, cpus), 1),
            "one_search_at_a_time_all_threads_qps": round(rate(search.open_searcher(threads=0), 1), 1)}


def measure_cost(args, env: dict, cpus: str | None, compare: bool = False) -> dict:
    command = [sys.executable, __file__, "--engine-cost", str(args.cost_questions), "--seed", str(args.seed),
               *(["--compare"] if compare else [])]
    if cpus is not None:
        if not shutil.which("taskset"):
            raise SystemExit("taskset (util-linux) is needed to measure the one-core cost")
        command = ["taskset", "-c", cpus, *command]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the engine cost run failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- 2. the load client ---------------------------------------------------------------------------


class Route:
    """How to ask one question on one route, and whether the answer is one."""

    def __init__(self, name: str, path: str, body):
        self.name, self.path, self.body = name, path, body

    def request(self, host: str, question: str) -> bytes:
        payload = json.dumps(self.body(question), ensure_ascii=False).encode()
        return (f"POST {self.path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n\r\n").encode() + payload


API = Route("api", "/api/search", lambda q: {"question": q, "top_k": 5})
GRADIO = Route("gradio", "/gradio_api/run/search", lambda q: {"data": [q, 5, ""]})


async def _exchange(reader, writer, raw: bytes) -> tuple[int, bytes]:
    writer.write(raw)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length)


def _well_formed(route: Route, body: bytes) -> bool:
    out = json.loads(body)
    if route is GRADIO:
        out = out.get("data", [None])[0]
    return isinstance(out, dict) and "results" in out and "decision" in out and not out.get("error")


async def _client(port: int, route: Route, asked: list[str], start: int, until: float, seen: dict) -> None:
    host = f"127.0.0.1:{port}"
    i, connection = start, None
    while time.perf_counter() < until:
        if connection is None:
            try:
                connection = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
            except (OSError, asyncio.TimeoutError) as e:
                seen["connection_errors"].append(type(e).__name__)
                await asyncio.sleep(0.05)
                continue
        reader, writer = connection
        raw = route.request(host, asked[i % len(asked)])
        i += 1
        t0 = time.perf_counter()
        try:
            status, body = await asyncio.wait_for(_exchange(reader, writer, raw), 30)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as e:
            seen["connection_errors"].append(type(e).__name__)
            writer.close()
            connection = None
            continue
        ms = (time.perf_counter() - t0) * 1000
        if status == 200 and _well_formed(route, body):
            seen["ok"].append(ms)
        elif status == 503:
            seen["refused"].append(ms)
        else:
            seen["errors"].append(f"{status}: {body[:120]!r}")
    if connection is not None:
        connection[1].close()


def run_level(port: int, route: Route, clients: int, seconds: float, asked: list[str]) -> dict:
    seen: dict = {"ok": [], "refused": [], "errors": [], "connection_errors": []}

    async def main():
        until = time.perf_counter() + seconds
        await asyncio.gather(*(_client(port, route, asked, k * 37, until, seen) for k in range(clients)))

    t0 = time.perf_counter()
    asyncio.run(main())
    wall = time.perf_counter() - t0
    ok = np.array(seen["ok"]) if seen["ok"] else np.array([np.nan])
    pct = {f"p{p}_ms": round(float(np.percentile(ok, p)), 1) for p in (50, 95, 99)}
    return {"route": route.name, "clients": clients, "seconds": round(wall, 1), "ok": len(seen["ok"]),
            "rps": round(len(seen["ok"]) / wall, 1), **pct, "max_ms": round(float(np.max(ok)), 1),
            "refused_503": len(seen["refused"]),
            "p50_503_ms": round(float(np.percentile(seen["refused"], 50)), 1) if seen["refused"] else None,
            "slowest_503_ms": round(max(seen["refused"]), 1) if seen["refused"] else None,
            "errors": len(seen["errors"]), "error_samples": sorted(set(seen["errors"]))[:3],
            "connection_errors": len(seen["connection_errors"]),
            "over_1s": int(np.sum(ok > 1000)) if seen["ok"] else 0}


# -- 3. the visitor in Chromium -------------------------------------------------------------------


def chat_in_browser(url: str, asked: list[str], result: dict, ready: threading.Event, go: threading.Event) -> None:
    """Open the chat (before the load), then, once `go` is set, ask and time each answer."""
    from playwright.sync_api import sync_playwright

    flags = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync"]
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=flags)
            page = browser.new_page(locale="ja-JP")
            page.set_default_timeout(20_000)
            page.goto(url)
            box = page.locator("#desk-question textarea")
            box.wait_for()
            ready.set()
            go.wait(60)
            answers, times = page.locator("#desk-chat .desk-lead"), []
            for q in asked[:3]:
                before = answers.count()
                box.fill(q)
                t0 = time.perf_counter()
                box.press("Enter")
                answers.nth(before).wait_for()
                times.append(round(time.perf_counter() - t0, 2))
            result["answer_s"] = times
            browser.close()
    except Exception as e:  # noqa: BLE001 - reported in the figures, the load run goes on
        result["error"] = f"{type(e).__name__}: {e}"[:300]
    finally:
        ready.set()


# -- the run -----------------------------------------------------------------------------------------


def table(levels: list[dict], ceiling: float) -> str:
    head = (f"{'route':>12} {'clients':>7} {'req/s':>7} {'×ceiling':>8} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} "
            f"{'max ms':>7} {'503s':>5} {'503 max':>7} {'errors':>6} {'conn err':>8} {'RSS MB':>7} {'CPU ms':>6}")
    lines = [head, "-" * len(head)]
    for r in levels:
        slow503 = "-" if r["slowest_503_ms"] is None else f"{r['slowest_503_ms']:.0f}"
        lines.append(f"{r['route']:>12} {r['clients']:>7} {r['rps']:>7.1f} {r['rps'] / ceiling:>8.2f} "
                     f"{r['p50_ms']:>7.1f} {r['p95_ms']:>7.1f} {r['p99_ms']:>7.1f} {r['max_ms']:>7.1f} "
                     f"{r['refused_503']:>5} {slow503:>7} {r['errors']:>6} {r['connection_errors']:>8} "
                     f"{r['rss_mb_after'] or float('nan'):>7.1f} {r['desk_cpu_ms_per_answer']:>6.1f}")
    return "\n".join(lines)


def levels_of(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--api-levels", default="1,8,50", help="concurrent clients on /api/search")
    parser.add_argument("--gradio-levels", default="1,8", help="concurrent clients on the pinned Gradio /search")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each level")
    parser.add_argument("--cost-questions", type=int, default=300, help="questions timed for the ceiling")
    parser.add_argument("--browser", action=argparse.BooleanOptionalAction, default=Path(CHROMIUM).exists(),
                        help="a visitor in Chromium during one more 8-client API level")
    parser.add_argument("--index-dir", type=Path, default=Path(os.environ.get("MADOGUCHI_INDEX", REPO / "index")))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--engine-cost", type=int, help=argparse.SUPPRESS)  # the child of measure_cost
    parser.add_argument("--compare", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.engine_cost:
        print(json.dumps(engine_cost(args.engine_cost, args.seed, args.compare)))
        return

    started = time.perf_counter()
    env = desk_env(args.index_dir.resolve())
    if not (args.index_dir / "CURRENT").exists():
        print(f"no index in {args.index_dir}: running python -m chatbot build", flush=True)
        subprocess.run([sys.executable, "-m", "chatbot", "build"], cwd=REPO, env=env, check=True)
    cpus = len(os.sched_getaffinity(0))
    print("measuring one question's cost on one core (taskset -c 0)…", flush=True)
    cost = measure_cost(args, env, "0")
    ceiling = cpus * 1000 / cost["ms"]
    print(f"  {cost['ms']} ms a question on one core: ceiling {cpus} CPUs → {ceiling:.1f} questions/s", flush=True)
    if cpus > 1:
        cost["choice"] = c = measure_cost(args, env, None, compare=True)
        print(f"  in process on {c['cpus']} CPUs: {c['one_thread_searches_in_parallel_qps']} q/s with one-thread "
              f"searches in parallel (the desk's way), {c['one_search_at_a_time_all_threads_qps']} q/s with one "
              f"search at a time on all threads", flush=True)
    asked = questions(args.seed)
    api_levels, gradio_levels = levels_of(args.api_levels), levels_of(args.gradio_levels)
    browser: dict = {}
    with tempfile.TemporaryDirectory(prefix="madoguchi-load-") as tmp:
        desk = DeskProcess(args.index_dir.resolve(), Path(tmp) / "data", rate_limit=0, log=Path(tmp) / "desk.log")
        out = []
        try:
            print(f"{desk.ready_line}  (pid {desk.pid}, {desk.start_s} s)", flush=True)
            rss_ready = desk.rss()
            run_level(desk.port, API, 2, 2, asked)  # warm-up
            # The browser's level comes after the plain ones, so that Chromium's own CPU does not
            # count against the API's figures.
            plan = [(API, n, False) for n in api_levels] + [(GRADIO, n, False) for n in gradio_levels]
            if args.browser:
                plan.append((API, 8, True))
            for route, n, with_browser in plan:
                visitor = None
                if with_browser:
                    ready, go = threading.Event(), threading.Event()
                    visitor = threading.Thread(target=chat_in_browser, args=(desk.url, asked[::7], browser, ready, go),
                                               daemon=True)
                    visitor.start()
                    ready.wait(90)
                    threading.Timer(args.seconds / 4, go.set).start()  # once the load has built up
                cpu = desk.cpu()
                r = run_level(desk.port, route, n, args.seconds, asked)
                r["rss_mb_after"] = desk.rss()
                # the desk's CPU per answered question: what one costs it, HTTP and log included
                r["desk_cpu_ms_per_answer"] = round((desk.cpu() - cpu) * 1000 / max(r["ok"], 1), 1)
                if visitor is not None:
                    visitor.join(60)
                    r["route"], r["chromium_chat"] = "api+chromium", dict(browser)
                out.append(r)
                line = (f"  {r['route']} {n:>2} clients: {r['rps']} req/s ({r['rps'] / ceiling:.2f} × ceiling), "
                        f"p95 {r['p95_ms']} ms, p99 {r['p99_ms']} ms, {r['refused_503']} × 503, "
                        f"{r['errors']} errors, {r['connection_errors']} connection errors")
                if visitor is not None:
                    line += f"; the chat in Chromium answered in {browser.get('answer_s', browser.get('error'))} s"
                print(line, flush=True)
            rss_after = desk.rss()
        finally:
            rc = desk.stop()
    results = {"meta": {"python": platform.python_version(), "cpus": cpus, "seconds_per_level": args.seconds,
                        "questions": len(asked), "client": "asyncio, keep-alive, closed loop",
                        "elapsed_s": round(time.perf_counter() - started, 1), "desk_exit_code": rc},
               "one_core": cost, "ceiling_qps": round(ceiling, 1), "levels": out,
               "desk_rss_mb": {"at_ready": rss_ready, "after": rss_after}}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1, ensure_ascii=False))
    print()
    print(table(out, ceiling))
    print(f"\nceiling {ceiling:.1f} q/s ({cost['ms']} ms a question on one core × {cpus} CPUs); desk RSS "
          f"{rss_ready} MB at ready, {rss_after} MB after; total {results['meta']['elapsed_s']} s; {args.json}")


if __name__ == "__main__":
    main()
