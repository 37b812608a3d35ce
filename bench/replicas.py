"""Many desks, one log: two desks behind nginx, one PostgreSQL, and a desk killed mid-run.

What is measured, all on 127.0.0.1:
- a throwaway PostgreSQL cluster (tests/postgres.py) holds the log of both desks;
- two desks, `python app.py --db <cluster> --replica desk-a` and `... desk-b`, each with its own
  --data-dir (its spool), both over the same built index;
- nginx (/usr/sbin/nginx, one worker) in front of them, with deploy/nginx/madoguchi.conf rendered
  for their ports: the JSON API /api/ is balanced by least_conn;
- C client threads (default 8) for D seconds (default 60), each with one keep-alive connection to
  nginx, asking questions through POST /api/search (in-scope and off-topic ones, each
  made unique with a " r<run>-<client>-<n>" suffix) and sending feedback through
  POST /api/feedback for every second answer (the top programme's key, "" when the desk
  abstained). Acknowledged = HTTP 200 with the question echoed / "recorded": true; anything else
  (502, reset, timeout, another answer) is an error, counted by kind;
- at 40% of the run desk-a gets SIGKILL; the clients carry on through nginx, which must send
  everything to desk-b. Errors are counted overall and in a window around the kill (requests in
  flight at the kill or started within --window seconds after it);
- afterwards every acknowledged question (by its exact text) and feedback (by its uid) is looked
  up in PostgreSQL: once when desk-b's spool is drained, and again after desk-a's spool has been
  written (desk-a restarted with the same --data-dir and --replica, or `--recover flush`:
  `python -m chatbot db flush`). Expected: nothing acknowledged missing after that.

Reported: requests, acknowledgements, errors (by kind, around the kill), throughput (acknowledged
requests/s overall, before and after the kill), client-side latency through nginx (p50/p95/p99),
rows stored vs acknowledged before and after the recovery, rows per replica (and after the kill:
desk-b's share shows nginx's failover), what desk-a's spool held, nginx's retries from its access log.
Everything started here is stopped and removed on exit, also on failure or Ctrl-C.

    python bench/replicas.py                       # 8 clients, 60 s, kill at 40%: about 1.5 minutes
    python bench/replicas.py --duration 20 --clients 4 --json /tmp/replicas.json
    python bench/replicas.py --requests-per-client 50 --recover flush
    python bench/replicas.py --duration 40 --db-outage 12 --json bench/results/replicas_outage.json
                                                   # PostgreSQL stopped around the kill: desk-a dies
                                                   # with records only in its spool
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import psycopg

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # tests.postgres
QUERIES = REPO / "eval" / "queries.jsonl"
NGINX_SNIPPET = REPO / "deploy" / "nginx" / "madoguchi.conf"
DEFAULT_JSON = REPO / "bench" / "results" / "replicas.json"
NGINX = "/usr/sbin/nginx"

from desk_probe import HOST, DeskProcess, desk_env, free_port  # noqa: E402  (beside this script)

# Questions people ask (plus eval/queries.jsonl), and some the desk should decline.
ASKED = ["J-PlatPatで特許を検索したい", "中小企業の外国出願の費用を補助してほしい", "商標の出願を手伝ってほしい",
         "知財の専門家に無料で相談したい"]
OFF_TOPIC = ["今日の天気は？", "美味しい焼肉屋を教えてください", "明日の株価を予想して", "おすすめの映画は？"]


# -- nginx -------------------------------------------------------------------------------------

def render_nginx(prefix: Path, listen_port: int, ports: tuple[int, int]) -> Path:
    """deploy/nginx/madoguchi.conf with this run's ports, wrapped in a minimal nginx.conf whose
    every path (pid, logs, temp files) is inside `prefix`."""
    snippet = NGINX_SNIPPET.read_text(encoding="utf-8")
    for name, value in {"LISTEN": f"{HOST}:{listen_port}", "PORT_A": ports[0], "PORT_B": ports[1],
                        "LOG_DIR": prefix / "logs"}.items():
        snippet = snippet.replace("{{" + name + "}}", str(value))
    left = re.findall(r"\{\{\w+\}\}", snippet)
    if left:
        raise RuntimeError(f"{NGINX_SNIPPET} has placeholders this bench does not fill: {sorted(set(left))}")
    (prefix / "logs").mkdir(parents=True)
    (prefix / "madoguchi.conf").write_text(snippet, encoding="utf-8")
    temp = prefix / "temp"
    temp.mkdir()  # nginx makes only the last level of a temp path
    temp.chmod(0o755)
    main = f"""# Written by bench/replicas.py around deploy/nginx/madoguchi.conf; removed after the run.
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 512; }}
http {{
    # Debian's compiled-in temp paths are under /var/lib/nginx: keep this nginx out of them. As root
    # the worker runs as nobody; nginx creates these directories and hands them to that user.
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    include {prefix}/madoguchi.conf;
}}
"""
    conf = prefix / "nginx.conf"
    conf.write_text(main, encoding="utf-8")
    return conf


class Nginx:
    """nginx in the foreground (daemon off) as a child process: stopped by its master's PID."""

    def __init__(self, prefix: Path, conf: Path, port: int, timeout: float = 10.0):
        self.prefix, self.port = prefix, port
        cmd = [NGINX, "-p", str(prefix), "-e", str(prefix / "logs" / "error.log"), "-c", str(conf)]
        checked = subprocess.run([*cmd, "-t", "-q"], capture_output=True, text=True)
        if checked.returncode:
            raise RuntimeError(f"nginx -t rejected {conf}:\n{checked.stderr}")
        self.proc = subprocess.Popen([*cmd, "-g", "daemon off;"], stdout=subprocess.DEVNULL,
                                     stderr=open(prefix / "logs" / "stderr.log", "w"))
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited ({self.proc.returncode}): {self.error_log()[-1000:]}")
            try:
                socket.create_connection((HOST, port), timeout=0.5).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"nginx did not listen on {port} within {timeout:.0f} s") from None
                time.sleep(0.1)

    def error_log(self) -> str:
        """nginx's own log, then the server block's (which the snippet sends to madoguchi.error.log)."""
        paths = [self.prefix / "logs" / name for name in ("error.log", "madoguchi.error.log")]
        return "".join(path.read_text(errors="replace") for path in paths if path.exists())

    def upstream_errors(self) -> dict:
        """The error log's [error] lines by what happened ("connect() failed (111: Connection refused)"…)."""
        found = re.findall(r"\[error\] \d+#\d+: \*\d+ (.*?) while", self.error_log())
        return count_by(found, lambda message: message)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM to the master: a fast shutdown, its worker goes with it
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def access_log(self) -> list[dict]:
        """The madoguchi_upstream lines: time (epoch s), request, status, upstream addresses tried."""
        pattern = re.compile(r'\[[^]]*\] (?P<msec>[\d.]+) "(?P<request>[^"]*)" (?P<status>\d+) \S+ '
                             r'upstream=(?P<upstream>.*?) ustatus=(?P<ustatus>.*?) urt=')
        out = []
        path = self.prefix / "logs" / "madoguchi.access.log"
        for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
            m = pattern.search(line)
            if m:
                out.append({"at": float(m["msec"]), "request": m["request"], "status": int(m["status"]),
                            "upstreams": [u.strip() for u in m["upstream"].split(",")],
                            "ustatus": m["ustatus"]})
        return out


def ui_check(port: int, timeout: float) -> dict:
    """The other upstream (madoguchi_ui): the page's config names nginx's address, not a desk's, and a
    gradio_client call, which joins the queue and then reads its events (SSE) in a second request,
    gets its answer: both requests must reach the same desk. Untagged, so not counted."""
    from gradio_client import Client

    url = f"http://{HOST}:{port}"
    out: dict = {}
    try:
        with urllib.request.urlopen(f"{url}/config", timeout=timeout) as response:
            out["config_root"] = json.loads(response.read()).get("root")
        out["root_is_nginx"] = out["config_root"].rstrip("/") == url
        t0 = time.perf_counter()
        gradio = Client(url + "/", verbose=False)
        try:
            answer = gradio.predict("J-PlatPatで特許を検索したい", 5, "", api_name="/search")
        finally:
            gradio.close()  # its heartbeat stream would stay open on one desk through the run
        out["queue_call_ok"] = isinstance(answer, dict) and answer.get("query") == "J-PlatPatで特許を検索したい"
        out["queue_call_ms"] = round((time.perf_counter() - t0) * 1000, 1)
    except Exception as e:  # noqa: BLE001 - reported, the load run goes on
        out["error"] = f"{type(e).__name__}: {e}"[:300]
    return out


# -- the clients -------------------------------------------------------------------------------

class Api:
    """One keep-alive HTTP connection to nginx; a new one after any failure."""

    def __init__(self, port: int, timeout: float):
        self.port, self.timeout, self.conn = port, timeout, None

    def call(self, api: str, body: dict) -> tuple[dict | None, str]:
        """(the answer, "") or (None, the kind of error)."""
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection(HOST, self.port, timeout=self.timeout)
            self.conn.request("POST", f"/api/{api}", body=json.dumps(body),
                              headers={"Content-Type": "application/json"})
            response = self.conn.getresponse()
            body = response.read()
            if response.status != 200:
                self.close()  # nginx may close after an error page; start clean either way
                return None, f"HTTP {response.status}"
            return json.loads(body), ""
        except (OSError, http.client.HTTPException, ValueError, KeyError, IndexError, TypeError) as e:
            self.close()
            return None, "timeout" if isinstance(e, TimeoutError) else type(e).__name__

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.conn = None


def client(c: int, run: str, questions: list[str], args, start: float, stop: threading.Event,
           port: int, out: list[dict]) -> None:
    """Ask, and give feedback on every `feedback_every`-th answer, until `stop` or the request count."""
    api = Api(port, args.timeout)
    i = 0
    try:
        while not stop.is_set() and (not args.requests_per_client or i < args.requests_per_client):
            question = f"{questions[(c * 7919 + i) % len(questions)]} r{run}-{c}-{i}"
            t0 = time.monotonic() - start
            answer, error = api.call("search", {"question": question, "top_k": 5})
            if not error and not (isinstance(answer, dict) and answer.get("query") == question
                                  and "results" in answer and "error" not in answer):
                error = "unexpected answer"
            out.append({"kind": "search", "t0": t0, "t1": time.monotonic() - start, "error": error,
                        "question": question})
            if not error and i % args.feedback_every == 0:
                key = answer["results"][0]["key"] if answer["results"] and not answer.get("abstained") else ""
                helpful = (i // args.feedback_every) % 2 == 0
                t0 = time.monotonic() - start
                ack, error = api.call("feedback", {"question": question, "key": key, "helpful": helpful})
                uid = ""
                if not error:
                    try:
                        uid = str(uuid.UUID(ack["id"])) if ack.get("recorded") is True else ""
                    except (KeyError, TypeError, ValueError, AttributeError):
                        uid = ""
                    error = "" if uid else "not recorded"
                out.append({"kind": "feedback", "t0": t0, "t1": time.monotonic() - start, "error": error,
                            "question": question, "uid": uid})
            i += 1
    finally:
        api.close()


# -- the database ------------------------------------------------------------------------------

def stored(url: str, run: str) -> dict:
    """This run's rows: question texts (with how often each is there), feedback uids, per replica."""
    tag = f"% r{run}-%"
    with psycopg.connect(url) as conn:
        questions: dict[str, int] = {}
        for question, n in conn.execute("SELECT question, count(*) FROM questions WHERE question LIKE %s "
                                        "GROUP BY question", (tag,)):
            questions[question] = n
        feedback = {str(uid) for (uid,) in conn.execute("SELECT uid FROM feedback WHERE question LIKE %s", (tag,))}
        replicas = dict(conn.execute("SELECT coalesce(replica, ''), count(*) FROM questions WHERE question LIKE %s "
                                     "GROUP BY 1 ORDER BY 1", (tag,)).fetchall())
    return {"questions": questions, "feedback": feedback, "replicas": replicas}


def replicas_since(url: str, run: str, since: datetime) -> dict:
    with psycopg.connect(url) as conn:
        return dict(conn.execute("SELECT coalesce(replica, ''), count(*) FROM questions WHERE question LIKE %s "
                                 "AND at >= %s GROUP BY 1 ORDER BY 1", (f"% r{run}-%", since)).fetchall())


def compare(db: dict, acked_q: list[str], acked_fb: list[str], sent_q: set[str]) -> dict:
    missing_q = [q for q in acked_q if q not in db["questions"]]
    missing_fb = [u for u in acked_fb if u not in db["feedback"]]
    return {"questions_stored": sum(db["questions"].values()), "feedback_stored": len(db["feedback"]),
            "acknowledged_questions_missing": len(missing_q), "acknowledged_feedback_missing": len(missing_fb),
            "missing_samples": (missing_q[:3] + missing_fb[:3]),
            # logged twice would be a bug (uids are unique); logged but never acknowledged is a request
            # that was written to a spool and then lost its answer (the kill): allowed, reported
            "questions_stored_twice": sum(n > 1 for n in db["questions"].values()),
            "stored_not_acknowledged": len((set(db["questions"]) & sent_q) - set(acked_q)),
            "per_replica": db["replicas"]}


def spool_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def wait_drained(spool: Path, timeout: float) -> float | None:
    """Seconds until the desk's spool is empty (its writer truncates it once all is stored), or None."""
    t0 = time.monotonic()
    while spool_size(spool):
        if time.monotonic() - t0 > timeout:
            return None
        time.sleep(0.2)
    return round(time.monotonic() - t0, 2)


def read_spool(path: Path) -> list[dict]:
    records = []
    if path.exists():
        for line in path.read_bytes().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:  # a line torn by the kill: never acknowledged
                records.append({"torn": True})
    return records


# -- figures -----------------------------------------------------------------------------------

def percentiles(ms: list[float]) -> dict:
    if not ms:
        return {"n": 0}
    a = np.array(ms)
    return {"n": len(ms), "p50": round(float(np.percentile(a, 50)), 1), "p95": round(float(np.percentile(a, 95)), 1),
            "p99": round(float(np.percentile(a, 99)), 1), "max": round(float(a.max()), 1)}


def count_by(items, key) -> dict:
    out: dict = {}
    for item in items:
        out[key(item)] = out.get(key(item), 0) + 1
    return dict(sorted(out.items()))


def load_questions() -> list[str]:
    """ASKED + OFF_TOPIC + eval/queries.jsonl without the follow-ups (they need a context)."""
    qs = list(ASKED) + list(OFF_TOPIC)
    for line in QUERIES.read_text(encoding="utf-8").splitlines():
        if line.strip():
            q = json.loads(line)
            if not q["kind"].startswith("followup"):
                qs.append(q["query"])
    return qs


def ensure_index(index_dir: Path | None, tmp: Path) -> tuple[Path, dict]:
    """A built index: --index-dir, else ./index if built, else one built now into `tmp`."""
    if index_dir is not None:
        if not (index_dir / "CURRENT").exists():
            raise SystemExit(f"no built index in {index_dir} (no CURRENT file)")
        return index_dir.resolve(), {"built": False}
    if (REPO / "index" / "CURRENT").exists():
        return REPO / "index", {"built": False}
    target = tmp / "index"
    print(f"no built index in {REPO / 'index'}: building one in {target}", flush=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "chatbot", "build", "--index", str(target)], cwd=REPO, check=True,
                   env=desk_env(target))
    return target, {"built": True, "build_s": round(time.perf_counter() - t0, 1)}


def _interrupted(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


# -- the run -----------------------------------------------------------------------------------

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=8, help="concurrent client threads")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--requests-per-client", type=int, default=0,
                        help="questions per client instead of --duration (the kill then comes at 40%% of them)")
    parser.add_argument("--kill-at", type=float, default=0.4, help="fraction of the run after which desk-a is killed")
    parser.add_argument("--window", type=float, default=5.0, help="seconds after the kill counted as its window")
    parser.add_argument("--feedback-every", type=int, default=2, help="feedback on every n-th answer")
    parser.add_argument("--timeout", type=float, default=30.0, help="client timeout per request, seconds")
    parser.add_argument("--db-outage", type=float, default=0.0, metavar="SECONDS",
                        help="stop PostgreSQL for this long, centred on the kill: desk-a dies with records "
                             "only in its spool (default 0: no outage)")
    parser.add_argument("--recover", choices=["restart", "flush"], default="restart",
                        help="how desk-a's spool is written afterwards: restart the desk, or python -m chatbot db flush")
    parser.add_argument("--index-dir", type=Path, help="a built index (default ./index, else one built now)")
    parser.add_argument("--start-timeout", type=float, default=120.0)
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args(argv)
    if args.db_outage and args.requests_per_client:
        parser.error("--db-outage needs a timed run (--duration), not --requests-per-client")
    if not os.path.exists(NGINX):
        raise SystemExit(f"{NGINX} is not installed (apt-get install nginx-light)")
    from tests.postgres import Cluster, available

    if available():
        raise SystemExit(f"cannot start PostgreSQL here: {available()}")

    # SIGTERM (e.g. a CI timeout) unwinds through the finally below like Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupted)
    began, load_before = time.perf_counter(), round(os.getloadavg()[0], 2)
    run = uuid.uuid4().hex[:6]
    tmp = Path(tempfile.mkdtemp(prefix="madoguchi-replicas-"))
    cluster = nginx = None
    desks: dict[str, DeskProcess] = {}
    stop = threading.Event()
    result: dict = {}
    try:
        index_dir, index_info = ensure_index(args.index_dir, tmp)
        env = desk_env(index_dir)
        cluster = Cluster()
        with psycopg.connect(cluster.url) as conn:
            pg_version = conn.execute("SHOW server_version").fetchone()[0]
        print(f"PostgreSQL {pg_version} on port {cluster.port}", flush=True)

        ports = {"desk-a": free_port(), "desk-b": free_port()}

        def start_desk(name: str) -> DeskProcess:
            data = tmp / name
            return DeskProcess(index_dir, data, db=cluster.url, replica=name, rate_limit=0, port=ports[name],
                               log=tmp / f"{name}.console.log", timeout=args.start_timeout)

        for name in ports:  # one after the other: a stale index would be rebuilt by the first only
            desks[name] = start_desk(name)
            print(f"{name}: {desks[name].ready_line} (pid {desks[name].pid}, {desks[name].start_s} s)", flush=True)
        starts = {name: d.start_s for name, d in desks.items()}

        prefix = tmp / "nginx"
        prefix.mkdir()
        prefix.chmod(0o755)  # nginx's worker (nobody, when run as root) reaches its temp dirs through it
        tmp.chmod(0o755)
        nginx_port = free_port()
        nginx = Nginx(prefix, render_nginx(prefix, nginx_port, (ports["desk-a"], ports["desk-b"])), nginx_port)
        nginx_version = subprocess.run([NGINX, "-v"], capture_output=True, text=True).stderr.strip()
        print(f"{nginx_version} on {HOST}:{nginx_port} → desk-a :{ports['desk-a']}, desk-b :{ports['desk-b']}",
              flush=True)

        ui = ui_check(nginx_port, args.timeout)
        print(f"UI through nginx: {ui}", flush=True)

        # Warm both desks up directly (their first searches load lazy state), untagged: not counted.
        for d in desks.values():
            warm = Api(d.port, args.timeout)
            for q in ASKED[:2]:
                warm.call("search", [q, 5, ""])
            warm.close()

        questions = load_questions()
        outs: list[list[dict]] = [[] for _ in range(args.clients)]
        start = time.monotonic()
        threads = [threading.Thread(target=client, args=(c, run, questions, args, start, stop, nginx_port, outs[c]),
                                    daemon=True) for c in range(args.clients)]
        for t in threads:
            t.start()
        print(f"{args.clients} clients through nginx: "
              + (f"{args.requests_per_client} questions each" if args.requests_per_client else f"{args.duration:.0f} s")
              + f"; SIGKILL to desk-a at {args.kill_at:.0%}", flush=True)

        # The kill comes at 40% of the time, or of the questions when the run is counted in questions.
        planned = args.clients * args.requests_per_client
        t_kill = None
        outage = {"planned_s": args.db_outage, "from": args.kill_at * args.duration - args.db_outage / 2}
        outage["to"] = outage["from"] + args.db_outage
        db_states: list[threading.Thread] = []

        def db_switch(action: str) -> None:  # pg_ctl waits for the server: keep the clock loop going
            outage[action] = round(time.monotonic() - start, 2)
            db_states.append(threading.Thread(target=getattr(cluster, action)))
            db_states[-1].start()
            print(f"  {outage[action]:.1f} s: PostgreSQL {action}", flush=True)

        while any(t.is_alive() for t in threads):
            elapsed = time.monotonic() - start
            if args.db_outage and "stop" not in outage and elapsed >= outage["from"]:
                db_switch("stop")
            if args.db_outage and "start" not in outage and elapsed >= outage["to"]:
                for t in db_states:
                    t.join()
                db_switch("start")
            if t_kill is None:
                if (planned and sum(len(o) for o in outs) >= args.kill_at * planned * (1 + 1 / args.feedback_every)) \
                        or (not planned and elapsed >= args.kill_at * args.duration):
                    kill_wall = datetime.now(timezone.utc)
                    t_kill = time.monotonic() - start
                    desks["desk-a"].kill()
                    print(f"  {t_kill:.1f} s: SIGKILL to desk-a (pid {desks['desk-a'].pid})", flush=True)
            if not planned and elapsed >= args.duration:
                stop.set()
            time.sleep(0.02)
        t_end = time.monotonic() - start
        for t in threads + db_states:
            t.join()
        records = [r for o in outs for r in o]
        if t_kill is None:
            raise RuntimeError("the run ended before the kill: make it longer")
        print(f"  {t_end:.1f} s: clients done, {len(records)} requests", flush=True)

        # -- what was acknowledged, and what the database holds --------------------------------
        acked = [r for r in records if not r["error"]]
        errors = [r for r in records if r["error"]]
        acked_q = [r["question"] for r in acked if r["kind"] == "search"]
        acked_fb = [r["uid"] for r in acked if r["kind"] == "feedback"]
        sent_q = {r["question"] for r in records if r["kind"] == "search"}

        drained_b = wait_drained(tmp / "desk-b" / "spool-desk-b.jsonl", 30)
        db_now = stored(cluster.url, run)
        before = compare(db_now, acked_q, acked_fb, sent_q)
        after_kill = replicas_since(cluster.url, run, kill_wall)

        spool_a = tmp / "desk-a" / "spool-desk-a.jsonl"
        spooled = read_spool(spool_a)
        spooled_q = {r.get("question") for r in spooled if r.get("kind") == "question"}
        spooled_fb = {str(uuid.UUID(r["uid"])) for r in spooled if r.get("kind") == "feedback"}
        missing_q = [q for q in acked_q if q not in db_now["questions"]]
        missing_fb = [u for u in acked_fb if u not in db_now["feedback"]]
        spool_info = {
            "lines": len(spooled), "torn": sum(1 for r in spooled if r.get("torn")),
            "questions": sum(1 for r in spooled if r.get("kind") == "question"),
            "feedback": len(spooled_fb),
            "already_stored": sum(1 for r in spooled if r.get("kind") == "question"
                                  and r.get("question") in db_now["questions"])
                              + len(spooled_fb & db_now["feedback"]),
            # every acknowledged record not yet in the database should be waiting here
            "holds_every_missing_acknowledged": all(q in spooled_q for q in missing_q)
                                                and all(u in spooled_fb for u in missing_fb),
        }
        print(f"before recovery: {before['acknowledged_questions_missing']} acknowledged questions and "
              f"{before['acknowledged_feedback_missing']} feedback missing; desk-a's spool holds "
              f"{spool_info['lines']} records", flush=True)

        t0 = time.perf_counter()
        if args.recover == "restart":
            desks["desk-a"] = start_desk("desk-a")
            recovery = {"how": "restart desk-a (same --data-dir and --replica)", "start_s": desks["desk-a"].start_s,
                        "drained_s": wait_drained(spool_a, 60)}
        else:
            done = subprocess.run([sys.executable, "-m", "chatbot", "db", "flush", "--db", cluster.url,
                                   "--data-dir", str(tmp / "desk-a"), "--json"], cwd=REPO, env=env,
                                  capture_output=True, text=True, timeout=120)
            recovery = {"how": "python -m chatbot db flush", "exit_code": done.returncode,
                        "output": (done.stdout or done.stderr).strip()[-500:], "spool_bytes_after": spool_size(spool_a)}
        recovery["seconds"] = round(time.perf_counter() - t0, 1)
        after = compare(stored(cluster.url, run), acked_q, acked_fb, sent_q)
        print(f"after recovery ({args.recover}): {after['acknowledged_questions_missing']} acknowledged questions "
              f"and {after['acknowledged_feedback_missing']} feedback missing", flush=True)

        # -- nginx's view: which desk each request went to, and the retries -----------------
        kill_epoch = kill_wall.timestamp()
        log = [e for e in nginx.access_log() if "/api/" in e["request"]]
        a, b = f"{HOST}:{ports['desk-a']}", f"{HOST}:{ports['desk-b']}"
        after_log = [e for e in log if e["at"] >= kill_epoch]
        nginx_info = {
            "version": nginx_version, "requests_logged": len(log),
            "retried_on_the_other_desk": sum(len(e["upstreams"]) > 1 for e in log),
            "status": count_by(log, lambda e: e["status"]),
            "after_kill_last_upstream": count_by(after_log, lambda e: {a: "desk-a", b: "desk-b"}.get(
                e["upstreams"][-1], e["upstreams"][-1])),
            "error_log": nginx.upstream_errors(),
        }

        # -- figures ----------------------------------------------------------------------------
        def overlaps(r, lo, hi):
            return r["t0"] <= hi and r["t1"] >= lo

        window = [r for r in records if overlaps(r, t_kill, t_kill + args.window)]
        acked_before = [r for r in acked if r["t1"] < t_kill]
        acked_after = [r for r in acked if r["t1"] >= t_kill]
        share_b = (after_kill.get("desk-b", 0) / sum(after_kill.values())) if after_kill else None
        result = {
            "requests": {"sent": len(records), "questions": len(sent_q),
                         "feedback": sum(r["kind"] == "feedback" for r in records)},
            "acknowledged": {"questions": len(acked_q), "feedback": len(acked_fb)},
            "errors": {"total": len(errors), "by_kind": count_by(errors, lambda r: r["error"]),
                       "by_endpoint": count_by(errors, lambda r: r["kind"]),
                       "before_kill": sum(r["t1"] < t_kill for r in errors),
                       "kill_window": {"seconds": args.window, "requests": len(window),
                                       "errors": sum(bool(r["error"]) for r in window)},
                       "after_window": sum(r["t0"] > t_kill + args.window for r in errors),
                       "samples": [{k: r[k] for k in ("kind", "t0", "t1", "error")} for r in errors[:10]]},
            "throughput_rps": {"overall": round(len(acked) / t_end, 2),
                               "before_kill": round(len(acked_before) / t_kill, 2),
                               "after_kill": round(len(acked_after) / (t_end - t_kill), 2),
                               "questions_overall": round(len(acked_q) / t_end, 2)},
            "latency_ms": {"all": percentiles([(r["t1"] - r["t0"]) * 1000 for r in acked]),
                           "search": percentiles([(r["t1"] - r["t0"]) * 1000 for r in acked if r["kind"] == "search"]),
                           "feedback": percentiles([(r["t1"] - r["t0"]) * 1000 for r in acked
                                                    if r["kind"] == "feedback"]),
                           "before_kill": percentiles([(r["t1"] - r["t0"]) * 1000 for r in acked_before]),
                           "after_kill": percentiles([(r["t1"] - r["t0"]) * 1000 for r in acked_after])},
            "database": {"before_recovery": {**before, "desk_b_spool_drained_s": drained_b},
                         "after_recovery": after},
            "failover": {"questions_stored_after_kill_per_replica": after_kill,
                         "desk_b_share_after_kill": None if share_b is None else round(share_b, 4),
                         "nginx": nginx_info},
            "ui_through_nginx": ui,
            "killed_desk_spool": spool_info,
            "recovery": recovery,
            "timeline_s": {"kill": round(t_kill, 2), "end": round(t_end, 2),
                           **({"db_stopped": outage.get("stop"), "db_started": outage.get("start")}
                              if args.db_outage else {})},
            "db_outage": ({"seconds": args.db_outage,
                           "errors_during": sum(bool(r["error"]) for r in records
                                                if overlaps(r, outage.get("stop", 0), outage.get("start", 0))),
                           "acknowledged_during": sum(not r["error"] for r in records
                                                      if overlaps(r, outage.get("stop", 0), outage.get("start", 0)))}
                          if args.db_outage else None),
            "passed": (after["acknowledged_questions_missing"] == 0 and after["acknowledged_feedback_missing"] == 0
                       and after["questions_stored_twice"] == 0),
            "meta": {"clients": args.clients, "duration_s": args.duration,
                     "requests_per_client": args.requests_per_client, "kill_at": args.kill_at,
                     "feedback_every": args.feedback_every, "recover": args.recover, "run": run,
                     "db_outage_s": args.db_outage,
                     "desk_start_s": starts, "index_dir": str(index_dir), "index": index_info,
                     "postgresql": pg_version, "nginx_conf": str(NGINX_SNIPPET.relative_to(REPO)),
                     "python": platform.python_version(), "cpus": os.cpu_count(), "machine": platform.machine(),
                     "latency": "client side through nginx, per request, acknowledged requests only",
                     "loadavg_1m": {"before": load_before, "at_end": round(os.getloadavg()[0], 2)},
                     "host": HOST},
        }
    finally:
        stop.set()
        if nginx is not None:
            nginx.stop()
        for d in desks.values():
            d.stop()
        if cluster is not None:
            cluster.remove()
        shutil.rmtree(tmp, ignore_errors=True)

    result["meta"]["elapsed_s"] = round(time.perf_counter() - began, 1)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, ensure_ascii=False, indent=1))
    print_summary(result, args.json)
    return 0 if result["passed"] else 1


def print_summary(r: dict, path: Path) -> None:
    e, t, lat, db = r["errors"], r["throughput_rps"], r["latency_ms"]["all"], r["database"]
    b, a = db["before_recovery"], db["after_recovery"]
    print()
    print(f"requests: {r['requests']['sent']} sent, acknowledged {r['acknowledged']['questions']} questions + "
          f"{r['acknowledged']['feedback']} feedback")
    print(f"errors: {e['total']} ({e['by_kind']}); around the kill ({e['kill_window']['seconds']:.0f} s): "
          f"{e['kill_window']['errors']} of {e['kill_window']['requests']}; after that window: {e['after_window']}")
    print(f"throughput (acknowledged req/s): {t['overall']} overall, {t['before_kill']} before the kill, "
          f"{t['after_kill']} after; latency through nginx p50 {lat['p50']} ms, p95 {lat['p95']} ms, "
          f"p99 {lat['p99']} ms")
    for label, d in (("before recovery", b), ("after recovery ", a)):
        print(f"in PostgreSQL {label}: {d['questions_stored']} questions, {d['feedback_stored']} feedback; "
              f"acknowledged but missing: {d['acknowledged_questions_missing']} questions, "
              f"{d['acknowledged_feedback_missing']} feedback; per replica {d['per_replica']}")
    if r.get("db_outage"):
        o, tl = r["db_outage"], r["timeline_s"]
        print(f"PostgreSQL down from {tl['db_stopped']} s to {tl['db_started']} s (kill at {tl['kill']} s): "
              f"{o['acknowledged_during']} requests acknowledged and {o['errors_during']} errors meanwhile")
    s = r["killed_desk_spool"]
    print(f"desk-a's spool after the kill: {s['lines']} records ({s['already_stored']} already stored); "
          f"recovery: {r['recovery']['how']} in {r['recovery']['seconds']} s")
    f = r["failover"]
    print(f"after the kill: questions stored per replica {f['questions_stored_after_kill_per_replica']} "
          f"(desk-b share {f['desk_b_share_after_kill']}); nginx retried {f['nginx']['retried_on_the_other_desk']} "
          f"requests on the other desk; its error log: {f['nginx']['error_log']}")
    ui = r["ui_through_nginx"]
    print(f"UI upstream (ip_hash): page root {ui.get('config_root')}, Gradio queue call "
          f"{'ok' if ui.get('queue_call_ok') else 'FAILED ' + ui.get('error', '')}")
    print(f"{'PASSED' if r['passed'] else 'FAILED'}: every acknowledged record stored after recovery; "
          f"{r['meta']['elapsed_s']} s on {r['meta']['cpus']} cores; results in {path}")


if __name__ == "__main__":
    sys.exit(main())
