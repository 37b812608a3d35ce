"""Issues 8 and 9: the running desk's log on both backends (SQLite and a real PostgreSQL).

Every /search call that was answered has its row, with many clients at once and after the desk is
killed with SIGKILL; a no-match question from the API is logged like one from the chat; /feedback is
stored; two desks on one database see each other's visitors; and while the database is down the desk
keeps answering, says so in the staff view, and writes everything once it is back.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import uuid
from pathlib import Path

import pytest

from chatbot.store import default_replica
from chatbot.store.schema import SCHEMA_VERSION

from desk_probe import STAFF, DeskProcess
from logdb import Outage, eventually, query, query_when, scalar

REPO = Path(__file__).resolve().parent.parent
OFF_TOPIC = ["今日の天気は？", "美味しい焼肉屋を教えてください", "明日の株価を予想して", "おすすめの映画は？"]


def post(url: str, api: str, data: list, timeout: float = 30) -> dict:
    """One call of a pinned API over plain HTTP, in one request (POST /gradio_api/run/<api>)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("POST", f"/gradio_api/run/{api}", body=json.dumps({"data": data}),
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    if response.status != 200:
        raise RuntimeError(f"POST {api}: {response.status}: {body[:200]!r}")
    return json.loads(body)["data"][0]


def search(url: str, question: str, timeout: float = 30) -> dict:
    return post(url, "search", [question, 5, ""], timeout)


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path) -> tuple[str, object]:
    """(URL of an empty log database, the PostgreSQL cluster or None)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db' / 'madoguchi.sqlite3'}", None
    cluster = request.getfixturevalue("pg_cluster")
    return cluster.new_database(f"t_{uuid.uuid4().hex[:16]}"), cluster


@pytest.fixture
def logged_desk(lean_index, db, tmp_path):
    """A desk of the test's own, on a log database of its own (for tests that count every row)."""
    url, _ = db
    desk = DeskProcess(lean_index, tmp_path / "data", db=url, replica="desk-a", staff=STAFF)
    try:
        yield desk, url
    finally:
        desk.stop()


# The next four share the session's desk on each backend (conftest `desk`; a desk start costs
# seconds): each reads back only its own rows, told apart by a token of its own.

def test_the_desk_says_where_it_logs(desk):
    replica = default_replica(desk.port)  # the session's desks are started without --replica
    assert any(line.startswith("madoguchi: log → ") and f"schema {SCHEMA_VERSION}, replica {replica}" in line
               for line in desk.output)


def test_no_match_from_the_api_is_logged_like_one_from_the_chat(desk):
    from gradio_client import Client

    token = uuid.uuid4().hex[:8]
    assert search(desk.url, f"今日の天気は？ api {token}")["abstained"]
    Client(desk.url, verbose=False).predict(f"今日の天気は？ chat {token}", [], api_name="/ask")
    rows = query_when(desk.log_url, "SELECT channel, question, abstained, replica FROM questions WHERE question LIKE ?",
                      lambda found: len(found) >= 2, f"%{token}")  # both written
    replica = default_replica(desk.port)
    assert sorted(rows) == [("api", f"今日の天気は？ api {token}", 1, replica),
                            ("visitor", f"今日の天気は？ chat {token}", 1, replica)]


def test_feedback_api_is_stored_and_checked(desk):
    url = desk.log_url
    out = post(desk.url, "feedback", ["J-PlatPatで特許を検索したい", "6.(1)", True])
    assert out["recorded"] and out["id"]
    assert eventually(lambda: query(url, "SELECT question, key, helpful, channel FROM feedback WHERE uid = ?",
                                    out["id"] if "sqlite" in url else str(uuid.UUID(out["id"])))) == [
        ("J-PlatPatで特許を検索したい", "6.(1)", 1, "api")]
    for bad in (["q", "99.(1)", True], ["", "", True], ["q", "", "maybe"]):
        refused = post(desk.url, "feedback", bad)
        assert not refused["recorded"] and refused["error"]


def test_concurrent_requests_are_each_logged(desk):
    threads, each = 12, 10
    token = uuid.uuid4().hex[:8]
    errors: list[str] = []

    def ask(t: int) -> None:
        for i in range(each):
            try:
                search(desk.url, f"{OFF_TOPIC[i % len(OFF_TOPIC)]} conc-{token}-{t}-{i}")
            except Exception as e:  # noqa: BLE001 - counted below
                errors.append(repr(e))

    workers = [threading.Thread(target=ask, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []
    assert eventually(lambda: scalar(desk.log_url, "SELECT count(*) FROM questions WHERE question LIKE ?",
                                     f"%conc-{token}-%") == threads * each)
    assert not any("cannot write" in line for line in desk.output)


def test_two_desks_on_one_database_see_the_whole_picture(lean_index, db, tmp_path):
    from gradio_client import Client

    url, _ = db
    a = DeskProcess(lean_index, tmp_path / "a", db=url, replica="desk-a", staff=STAFF)
    b = DeskProcess(lean_index, tmp_path / "b", db=url, replica="desk-b")  # the account a made is b's too
    try:
        Client(a.url, verbose=False).predict("今日の天気は？ asked at a", [], api_name="/ask")  # a visitor's chat
        search(b.url, "J-PlatPatで特許を検索したい")
        eventually(lambda: scalar(url, "SELECT count(*) FROM questions") == 2)
        for desk in (a, b):
            console = Client(desk.url + "/staff/", auth=STAFF, verbose=False)
            summary, _, no_match, desks = console.predict(api_name="/staff_stats")
            assert "質問 2 件" in summary
            assert [row[0] for row in no_match["data"]] == ["今日の天気は？ asked at a"]
            assert sorted(row[0] for row in desks["data"]) == ["desk-a", "desk-b"]
    finally:
        a.stop()
        b.stop()


def test_the_desk_keeps_answering_while_the_database_is_down(logged_desk, db):
    from gradio_client import Client

    desk, url = logged_desk
    search(desk.url, "今日の天気は？ before")
    assert eventually(lambda: scalar(url, "SELECT count(*) FROM questions") == 1)
    staff = Client(desk.url + "/staff/", auth=STAFF, verbose=False)  # logged in before the outage
    with Outage(url, db[1]):
        answers = [search(desk.url, f"{OFF_TOPIC[i % 4]} down-{i}") for i in range(10)]
        assert all(a["abstained"] for a in answers)
        assert post(desk.url, "feedback", ["今日の天気は？ down-0", "", False])["recorded"]
        assert "J-PlatPat" in search(desk.url, "J-PlatPatで特許を検索したい")["results"][0]["title"]

        def warned() -> str:
            summary = staff.predict(api_name="/staff_stats")[0]
            return summary if "⚠️" in summary else ""

        summary = eventually(warned)
        assert "データベースに書き込めません" in summary and "未書き込み" in summary
    assert eventually(lambda: scalar(url, "SELECT count(*) FROM questions") == 12, timeout=30)
    assert scalar(url, "SELECT count(*) FROM feedback") == 1
    assert any("cannot write to" in line for line in desk.output)
    assert eventually(lambda: any("again" in line for line in desk.output))
    assert "⚠️" not in staff.predict(api_name="/staff_stats")[0]


def test_kill_9_mid_load_loses_no_acknowledged_request(lean_index, db, tmp_path):
    url, _ = db
    data = tmp_path / "data"
    desk = DeskProcess(lean_index, data, db=url, replica="desk-a")
    acknowledged: list[str] = []
    failed = [0]
    lock = threading.Lock()
    stop = threading.Event()

    def client(c: int) -> None:
        i = 0
        while not stop.is_set():
            question = f"{OFF_TOPIC[i % len(OFF_TOPIC)]} kill9-{c}-{i}"
            i += 1
            try:
                out = search(desk.url, question, timeout=10)
            except Exception:  # noqa: BLE001 - after the kill every call fails; that is expected
                with lock:
                    failed[0] += 1
                if desk.proc.poll() is not None:
                    return
                continue
            assert out["query"] == question
            with lock:
                acknowledged.append(question)

    workers = [threading.Thread(target=client, args=(c,)) for c in range(8)]
    try:
        for w in workers:
            w.start()
        deadline = time.monotonic() + 60
        while len(acknowledged) < 120 and time.monotonic() < deadline:
            time.sleep(0.05)
        desk.kill()  # SIGKILL while the clients are still sending
        killed_after = len(acknowledged)
        stop.set()
        for w in workers:
            w.join(30)
    finally:
        stop.set()
        desk.kill()
    assert killed_after >= 50, f"only {killed_after} requests were answered before the kill"
    assert failed[0] >= 1  # the kill did land mid-load

    restarted = DeskProcess(lean_index, data, db=url, replica="desk-a")  # replays the spool it left
    try:
        search(restarted.url, "今日の天気は？ after-restart")

        def missing():
            logged = {q for (q,) in query(url, "SELECT question FROM questions")}
            return [q for q in acknowledged + ["今日の天気は？ after-restart"] if q not in logged]

        assert eventually(lambda: missing() == [], timeout=30), f"{len(missing())} of {len(acknowledged)} missing"
        if url.startswith("sqlite:///"):
            assert query(url, "PRAGMA integrity_check") == [("ok",)]
    finally:
        restarted.stop()
