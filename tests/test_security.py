"""Issue 8, security: the desk listens on 127.0.0.1 unless told otherwise (and warns then), sends no
analytics, serves no file from the machine, and logs nothing about a visitor beyond the question."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
from pathlib import Path

from logdb import eventually, query

REPO = Path(__file__).resolve().parent.parent
WARNING = ("madoguchi: WARNING: listening on {host}: anyone who can reach this machine can use the desk "
           "(the staff console at /staff asks for a login). Use the default 127.0.0.1 unless that is intended.")


# -- where it listens --------------------------------------------------------------------------------

def test_default_host_is_loopback():
    sys.path.insert(0, str(REPO))
    import app

    assert app.parse_args([]).host == "127.0.0.1"
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"  # set by importing app, before gradio
    assert int(os.environ["GRADIO_ANALYTICS_MAX_EVENTS"]) <= 100  # per-event records kept by the queue


def _listeners(port: int) -> list[str]:
    """Local addresses (hex, as in /proc/net/tcp*) listening on `port`."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            local, state = row.split()[1], row.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A = LISTEN
                found.append(address)
    return found


def test_running_desk_listens_on_loopback_only(desk):
    port = int(desk.url.rsplit(":", 1)[1])
    assert any(line.startswith(f"madoguchi: ready at http://127.0.0.1:{port}") for line in desk.output)
    assert _listeners(port) == ["0100007F"]  # 127.0.0.1 only; not 0.0.0.0, not ::
    assert not any("WARNING" in line for line in desk.output)


def test_another_host_is_warned_about_on_the_console(tmp_path):
    """`--host 0.0.0.0` prints the warning before anything else happens. The desk is made to stop
    before it could bind (no corpus to build from), so nothing is ever exposed by this test."""
    env = {**os.environ, "MADOGUCHI_CORPUS": str(tmp_path / "no-corpus"), "MADOGUCHI_INDEX": str(tmp_path / "index"),
           "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([sys.executable, str(REPO / "app.py"), "--host", "0.0.0.0", "--port", "9",
                           "--data-dir", str(tmp_path / "data")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    err = done.stderr.splitlines()
    assert err[0] == WARNING.format(host="0.0.0.0")
    assert done.returncode == 1 and err[-1].startswith("error: ") and "no *.md files" in err[-1]
    assert "ready at" not in done.stdout


# -- analytics ---------------------------------------------------------------------------------------

def get(desk, path: str) -> tuple[int, bytes]:
    """A raw GET: the path goes out exactly as written (no client-side ../ or %2e folding)."""
    host, port = desk.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_analytics_and_monitoring_are_off(desk):
    import json

    status, body = get(desk, "/config")
    assert status == 200 and json.loads(body)["analytics_enabled"] is False
    assert get(desk, "/monitoring")[0] != 200


# -- no file serving ------------------------------------------------------------------------------------

def _targets(desk) -> dict[str, bytes]:
    """Files that must never come out of the desk, with a piece of their content to look for."""
    corpus = REPO / "corpus" / "chapter5.md"
    out = {"/etc/passwd": b"root:", str(corpus): corpus.read_bytes()[200:260], str(REPO / "app.py"): b"def create_app",
           str(REPO / "README.md"): b"MADOGUCHI_CORPUS"}
    if desk.sqlite_file.exists():
        out[str(desk.sqlite_file)] = b"SQLite format 3"
    current = desk.index_dir / "CURRENT"
    if current.exists():
        out[str(current)] = current.read_bytes().strip()
    return out


def _variants(path: str) -> list[str]:
    rel = os.path.relpath(path, REPO)  # relative to the working directory of the desk
    up = "../" * 8 + path.lstrip("/")
    enc_up = "%2e%2e%2f" * 8 + path.lstrip("/")
    return [
        f"/gradio_api/file={path}", f"/file={path}", f"/gradio_api/file=/{path}", f"/gradio_api/file={rel}",
        f"/file={rel}", f"/gradio_api/file={up}", f"/file={up}", f"/gradio_api/file={enc_up}",
        f"/gradio_api/file={path.replace('/', '%2F')}", f"/gradio_api/file={'%252e%252e%252f' * 8}{path.lstrip('/')}",
        f"/gradio_api/file=..\\..\\..\\..\\..\\..\\{path.lstrip('/')}", f"/static/{up}", f"/assets/{up}",
        f"/gradio_api/file={REPO / 'corpus'}/../{rel}", f"/gradio_api/file={REPO.parent}/{REPO.name}/{rel}",
        f"/gradio_api/file=/proc/self/root{path}", f"/gradio_api/file=file://{path}",
    ]


def test_no_file_outside_the_app_can_be_read(desk):
    leaks = []
    for target, content in _targets(desk).items():
        for url in _variants(target):
            status, body = get(desk, url)
            if status == 200 and content in body:
                leaks.append(url)
    assert leaks == []


def test_the_checker_sees_a_served_file(desk):
    """The check above must be able to fail: the desk's own page does come back as 200 with content."""
    status, body = get(desk, "/")
    assert status == 200 and b"madoguchi" in body


# -- what is logged --------------------------------------------------------------------------------------

def test_store_keeps_only_the_documented_columns(desk):
    from gradio_client import Client

    Client(desk.url, verbose=False).predict("今日の天気は？", 5, "", api_name="/search")
    assert eventually(lambda: query(desk.log_url, "SELECT count(*) FROM questions"))
    tables, questions, feedback = columns(desk.log_url)
    assert tables == {"questions", "feedback", "schema_version", "staff_accounts"}
    assert questions == ["id", "at", "channel", "question", "context", "audience", "abstained", "ambiguous",
                         "top_key", "elapsed_ms", "uid", "replica"]
    assert feedback == ["id", "at", "channel", "question", "key", "helpful", "uid", "replica", "staff"]


def test_nothing_about_the_caller_reaches_the_log(desk):
    """Headers, cookies and the client's address are not stored: only the question text."""
    import json

    marker_ua, marker_cookie, marker_fwd = "UA-7f3a9c-marker", "cookie-51e0d2-marker", "203.0.113.77"
    question = "秘密の印 4be1c0 今日の天気は？"
    host, port = desk.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    headers = {"Content-Type": "application/json", "User-Agent": marker_ua, "Cookie": f"sid={marker_cookie}",
               "X-Forwarded-For": marker_fwd, "X-Real-IP": marker_fwd, "Authorization": "Bearer tok-9d8e7f"}
    conn.request("POST", "/gradio_api/call/search", body=json.dumps({"data": [question, 5, ""]}), headers=headers)
    event_id = json.loads(conn.getresponse().read())["event_id"]
    conn.request("GET", f"/gradio_api/call/search/{event_id}", headers=headers)
    assert conn.getresponse().read().startswith(b"event: complete")
    conn.close()
    url = desk.log_url
    eventually(lambda: query(url, "SELECT 1 FROM questions WHERE question = ?", question))
    rows = [" ".join(map(str, row)) for table in ("questions", "feedback")
            for row in query(url, f"SELECT * FROM {table}")]  # noqa: S608 - fixed names
    everything = "\n".join(rows)
    assert question in everything
    for marker in (marker_ua, marker_cookie, marker_fwd, "tok-9d8e7f", "127.0.0.1"):
        assert marker not in everything
    files = list(desk.data_dir.iterdir())  # the SQLite database if used, and this desk's spool (chatbot/store/log.py)
    raw = b"".join(p.read_bytes() for p in files)
    for marker in (marker_ua, marker_cookie, marker_fwd, "tok-9d8e7f"):
        assert marker.encode() not in raw
    names = {p.name for p in files}
    assert names - {"madoguchi.sqlite3", "madoguchi.sqlite3-shm", "madoguchi.sqlite3-wal"} == \
        {n for n in names if n.startswith("spool-") and n.endswith((".jsonl", ".lock"))} and len(names) <= 5


def columns(url: str) -> tuple[set[str], list[str], list[str]]:
    """(tables, columns of questions, columns of feedback) in the log's database, either backend."""
    if url.startswith("sqlite:///"):
        tables = {t for (t,) in query(url, "SELECT name FROM sqlite_master WHERE type = 'table'")}
        return tables, *([row[1] for row in query(url, f"PRAGMA table_info({t})")] for t in ("questions", "feedback"))
    tables = {t for (t,) in query(url, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")}
    return tables, *([c for (c,) in query(url, "SELECT column_name FROM information_schema.columns WHERE table_name = ?"
                                            " ORDER BY ordinal_position", t)] for t in ("questions", "feedback"))
