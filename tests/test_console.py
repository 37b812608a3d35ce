"""Issue 14: the staff console apart from the visitor desk, replayed as an attacker would, on the
running desk (both log backends): every finding of the issue's table has a test here.

1 staff data through the visitor app · 2 private events · 3 anonymous staff votes · 4 uploads ·
5 security headers · 6 CORS · 7 body size and echoes · 8 wrong JSON types · 9 (masking, file
modes: tests/test_store.py). Logins: scrypt accounts, lockout, HttpOnly SameSite cookies, logout.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from chatbot import staff
from chatbot.desk import web

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def http(desk):
    with httpx.Client(base_url=desk.url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def secret(desk, http):
    """A question an earlier visitor typed, with a phone number: no reply may carry it."""
    marker = f"秘密{uuid.uuid4().hex[:10]}"
    for _ in range(5):  # five times: the top of any no-match list
        out = call(http, "", "search", [f"{marker} 今日の天気は 090-1111-2222", 5, ""])
        assert out[0] == "complete"
    return marker


def call(http, prefix: str, api: str, data: list, cookies=None) -> tuple[str, object]:
    """/gradio_api/call/<api>: the event kind ("complete", "error") and its data."""
    r = http.post(f"{prefix}/gradio_api/call/{api}", json={"data": data}, cookies=cookies)
    if r.status_code != 200:
        return f"http {r.status_code}", r.text
    stream = http.get(f"{prefix}/gradio_api/call/{api}/{r.json()['event_id']}", cookies=cookies).text
    kind = stream.split("\n", 1)[0].removeprefix("event: ").strip()
    payload = stream.split("data: ", 1)[1].strip() if "data: " in stream else "null"
    return kind, json.loads(payload)


def join_every_event(http, prefix: str, count: int) -> str:
    """Call fn_index 0..count-1 through the queue, as a browser does, with empty inputs; all replies."""
    replies = []
    for fn_index in range(count):
        session = uuid.uuid4().hex[:11]
        r = http.post(f"{prefix}/gradio_api/queue/join", json={
            "data": [None] * 12, "fn_index": fn_index, "session_hash": session, "event_data": None, "trigger_id": None})
        replies.append(f"{fn_index}: {r.status_code} {r.text}")
        if r.status_code == 200:
            with http.stream("GET", f"{prefix}/gradio_api/queue/data", params={"session_hash": session}) as stream:
                for line in stream.iter_lines():
                    replies.append(line)
                    if "process_completed" in line or "close_stream" in line:
                        break
    return "\n".join(replies)


# -- 1, 2, 3: the visitor app has no staff function under any route -----------------------------------

def test_the_visitor_app_names_only_its_own_endpoints(http):
    info = http.get("/gradio_api/info", params={"all_endpoints": "true"}).json()
    assert set(info["named_endpoints"]) <= {"/search", "/feedback", "/ask"}
    config = http.get("/config").json()
    ids = {str(c.get("props", {}).get("elem_id")) for c in config["components"]}
    assert not [i for i in ids if i.startswith("staff")]
    assert not [d for d in config["dependencies"] if "staff" in str(d.get("api_name"))]


def test_no_visitor_event_shows_another_visitors_question(http, secret):
    config = http.get("/config").json()
    replies = join_every_event(http, "", len(config["dependencies"]))
    assert "process_completed" in replies  # the calls did run: the check can see a reply
    for name in ("staff_stats", "staff_search", "staff_feedback_down", "analytics", "stats"):
        replies += str(http.post(f"/gradio_api/run/{name}", json={"data": []}).text)
        replies += str(call(http, "", name, []))
    assert secret not in replies and "090-1111" not in replies


def test_every_console_route_wants_a_login(http, secret):
    for path in ("/staff/config", "/staff/gradio_api/info", "/staff/gradio_api/info?all_endpoints=true"):
        assert http.get(path).status_code == 401, path
    for name in ("staff_stats", "staff_search", "staff_feedback_down", "staff_correct"):
        assert http.post(f"/staff/gradio_api/run/{name}", json={"data": []}).status_code == 401
        assert http.post(f"/staff/gradio_api/call/{name}", json={"data": []}).status_code == 401
    replies = join_every_event(http, "/staff", 12)
    assert "process_completed" not in replies and secret not in replies
    assert all(line.split(" ", 2)[1] in ("401", "403") for line in replies.splitlines() if ": " in line[:5])


def test_the_console_shows_staff_the_no_match_questions_masked(desk, secret):
    summary, _, no_match, _ = desk.console().predict(api_name="/staff_stats")
    assert "質問" in summary
    # the API's questions are not in the no-match list (anyone can post them), and what is stored is masked
    assert secret not in json.dumps(no_match, ensure_ascii=False)


# -- logins ---------------------------------------------------------------------------------------------

def login(http, name: str, password: str) -> httpx.Response:
    return http.post("/staff/login", data={"username": name, "password": password})


def staff_cli(desk, *args, password: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "chatbot", "staff", *args, "--db", desk.log_url,
                           "--data-dir", str(desk.data_dir)], input=password + "\n", text=True, cwd=REPO,
                          capture_output=True, timeout=60)


def test_a_session_cookie_is_httponly_samesite_and_logout_ends_it(desk):
    with httpx.Client(base_url=desk.url, timeout=30) as http:
        r = login(http, *desk.staff)
        assert r.status_code == 200
        cookies = r.headers.get_list("set-cookie")
        assert cookies and all("HttpOnly" in c and "SameSite=Strict" in c for c in cookies)
        assert http.get("/staff/gradio_api/info").status_code == 200  # the client keeps the cookie
        http.get("/staff/logout", follow_redirects=False)
        stale = {c.split("=", 1)[0]: c.split("=", 1)[1].split(";", 1)[0] for c in cookies}
        assert http.get("/staff/gradio_api/info", cookies=stale).status_code == 401  # the token is gone


def test_wrong_passwords_lock_the_account_and_a_new_password_unlocks_it(desk):
    name, password = f"lock{uuid.uuid4().hex[:6]}", "a-long-password-1"
    assert staff_cli(desk, "add", name, "--password-stdin", password=password).returncode == 0
    with httpx.Client(base_url=desk.url, timeout=30) as http:
        assert login(http, name, "wrong").status_code == 400
        for _ in range(staff.MAX_FAILURES - 1):
            login(http, name, "wrong")
        assert login(http, name, password).status_code == 400  # locked: even the right password
        assert login(http, "nobody", password).status_code == 400
        listed = json.loads(staff_cli(desk, "list", "--json").stdout)["accounts"]
        assert next(a for a in listed if a["name"] == name)["locked"]
        assert staff_cli(desk, "add", name, "--password-stdin", password=password).returncode == 0
        assert login(http, name, password).status_code == 200
    assert staff_cli(desk, "remove", name).returncode == 0


def test_removing_an_account_ends_its_sessions(desk):
    name, password = f"gone{uuid.uuid4().hex[:6]}", "a-long-password-2"
    assert staff_cli(desk, "add", name, "--password-stdin", password=password).returncode == 0
    with httpx.Client(base_url=desk.url, timeout=30) as http:
        assert login(http, name, password).status_code == 200
        assert http.get("/staff/config").status_code == 200
        assert staff_cli(desk, "remove", name).returncode == 0
        time.sleep(web.Sessions.RECHECK + 0.2)
        assert http.get("/staff/config").status_code == 401  # not only after a restart
        assert call(http, "/staff", "staff_stats", [])[0] == "http 401"


def test_passwords_are_stored_only_as_scrypt_hashes(desk):
    from logdb import query

    stored = dict(query(desk.log_url, "SELECT name, hash FROM staff_accounts"))
    assert stored[desk.staff[0]].startswith("scrypt$") and desk.staff[1] not in stored[desk.staff[0]]
    assert staff.check_password(desk.staff[1], stored[desk.staff[0]])


# -- 4 to 8: hardening ---------------------------------------------------------------------------------

def test_uploads_are_refused(http):
    for prefix in ("", "/staff"):
        for route in ("upload", "process_recording"):
            r = http.post(f"{prefix}/gradio_api/{route}", files={"files": ("a.txt", b"x" * 2000, "text/plain")})
            assert r.status_code == 403, (prefix, route)


def test_a_chunked_body_is_refused_before_it_is_read(http):
    def chunks():
        yield b'{"data": ["'
        yield "特".encode() * 30_000
        yield b'", 5, ""]}'

    r = http.post("/gradio_api/call/search", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 411


@pytest.mark.parametrize("path", ["/", "/staff/", "/gradio_api/info", "/config"])
def test_every_page_carries_the_security_headers(http, path):
    headers = http.get(path).headers
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert (headers["x-frame-options"], headers["x-content-type-options"], headers["referrer-policy"]) == (
        "DENY", "nosniff", "no-referrer")


def test_no_other_origin_is_let_in_by_cors(http):
    origin = {"Origin": "http://127.0.0.1:8899"}
    preflight = http.options("/gradio_api/call/search", headers={
        **origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"})
    assert "access-control-allow-origin" not in preflight.headers
    assert "access-control-allow-origin" not in http.get("/config", headers=origin).headers
    assert "access-control-allow-credentials" not in http.get("/config", headers=origin).headers


def test_a_body_over_the_limit_is_refused_and_echoes_are_cut(http):
    r = http.post("/gradio_api/call/search", json={"data": ["特許" * 40_000, 5, ""]})
    assert r.status_code == 413
    kind, out = call(http, "", "search", ["特" * 3000, 5, "x" * 3000])
    assert kind == "complete" and len(out[0]["query"]) == 1000
    kind, out = call(http, "", "search", ["特許の相談", 5, "9" * 3000])
    assert kind == "complete" and len(out[0]["error"]) < 200


@pytest.mark.parametrize("api, data, field", [
    ("search", [123, 5, ""], "question"),
    ("search", [["a"], 5, ""], "question"),
    ("search", [{"q": 1}, 5, ""], "question"),
    ("search", ["特許の相談", 2.7, ""], "top_k"),
    ("search", ["特許の相談", True, ""], "top_k"),
    ("search", ["特許の相談", 5, ["6.(1)"]], "context"),
    ("feedback", ["特許の相談", "", ["a"]], "helpful"),
    ("feedback", ["特許の相談", "", "yes"], "helpful"),
    ("feedback", [["a"], "", True], "string"),
])
def test_wrong_json_types_are_a_clear_error_never_coerced(http, desk, api, data, field):
    since = len(desk.output)
    kind, out = call(http, "", api, data)
    assert kind == "complete", out
    assert field in out[0]["error"] and not out[0].get("recorded") and not out[0].get("results")
    assert "Traceback" not in "\n".join(desk.output[since:])


# -- no account: no console ----------------------------------------------------------------------------

def test_without_an_account_the_console_is_off_and_a_client_is_rate_limited(lean_index, tmp_path):
    from desk_probe import DeskProcess

    proc = DeskProcess(lean_index, tmp_path / "data", rate_limit=2)  # bursts of 4
    try:
        r = httpx.get(proc.url + "/staff/", timeout=30)
        assert r.status_code == 503 and "python -m chatbot staff add" in r.text
        assert httpx.post(proc.url + "/staff/login", data={"username": "a", "password": "b"}).status_code == 503
        assert any("staff console is off" in line for line in proc.output)
        with httpx.Client(base_url=proc.url, timeout=30) as http:
            codes = [http.post("/gradio_api/run/search", json={"data": ["特許の相談", 5, ""]}) for _ in range(8)]
            elsewhere = http.post("/gradio_api/run/search", json={"data": ["特許の相談", 5, ""]},
                                  headers={"X-Forwarded-For": "198.51.100.7"})  # another visitor behind nginx
        refused = [r for r in codes if r.status_code == 429]
        assert refused and all(r.headers["retry-after"] == "1" for r in refused)
        assert codes[0].status_code == 200 and elsewhere.status_code == 200
    finally:
        proc.stop()
