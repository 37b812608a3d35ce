"""Issue 9: the log on both backends (each test runs on SQLite and on a real PostgreSQL).

What is checked: records round-trip into the analytics, the schema migrates (from the version-1
SQLite file of a single desk too), a record is stored once however often it is replayed, an outage
delays records but loses none, a desk killed with SIGKILL loses no acknowledged record, and several
writers (threads, desks) share one database.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from chatbot import store
from chatbot.errors import StoreError
from chatbot.store import schema
from logdb import Outage, eventually, query, scalar

REPO = Path(__file__).resolve().parent.parent
ANSWERED = {"abstained": False, "ambiguous": False, "results": [{"key": "6.(1)"}]}
NO_MATCH = {"abstained": True, "ambiguous": False, "results": []}


@pytest.fixture
def log(db_url, tmp_path):
    opened = store.open_store(db_url, tmp_path / "data", "desk-1")
    yield opened
    opened.close(2)


def test_questions_and_feedback_reach_the_analytics(log, db_url):
    for question, answer in [("J-PlatPat", ANSWERED), ("天気", NO_MATCH), ("天気", NO_MATCH), ("株価", NO_MATCH)]:
        assert log.log_question("visitor", question, answer, context="6.(1)", audience="個人", elapsed_ms=8.5)
    assert log.log_question("api", "phishing: visit evil.example", NO_MATCH)  # anyone can call the API
    assert log.log_feedback("visitor", "J-PlatPat", "6.(1)", True)
    assert log.log_feedback("staff", "天気", "", False)
    assert log.flush(15), log.status()
    s = log.stats()
    assert (s["questions"], s["feedback"], s["helpful"], s["unhelpful"]) == (5, 2, 1, 1)
    assert s["no_match"][0] == ("天気", 2) and len(s["no_match"]) == 2  # not the API's: staff would read it as a visitor's
    assert [(n, m) for _, n, m in s["per_day"]] == [(5, 4)]
    assert s["replicas"][0][:2] == ("desk-1", 5)
    assert (s["pending"], s["last_error"], s["schema"]) == (0, "", schema.SCHEMA_VERSION)
    row = query(db_url, "SELECT channel, question, context, audience, abstained, ambiguous, top_key, elapsed_ms,"
                        " replica FROM questions WHERE NOT abstained")
    assert row == [("visitor", "J-PlatPat", "6.(1)", "個人", 0, 0, "6.(1)", 8.5, "desk-1")]
    assert query(db_url, "SELECT count(DISTINCT uid) FROM feedback") == [(2,)]


def test_the_spool_is_emptied_once_everything_is_stored(log):
    log.log_question("api", "q", NO_MATCH)
    assert log.flush(15)
    assert eventually(lambda: log.spool_path.stat().st_size == 0)


def test_a_record_written_twice_is_stored_once(log, db_url):
    """Replaying a spool after a crash re-sends records the database may already have."""
    log.log_question("api", "once", NO_MATCH)
    assert log.flush(15)
    record = json.loads(query_spool_free_record(db_url))
    assert log.backend.insert([record, record]) == []
    assert scalar(db_url, "SELECT count(*) FROM questions WHERE question = ?", "once") == 1


def query_spool_free_record(db_url) -> str:
    uid = query(db_url, "SELECT uid FROM questions WHERE question = ?", "once")[0][0]
    return json.dumps({"uid": uid.replace("-", ""), "kind": "question", "at": "2026-11-25T00:00:00+00:00",
                       "replica": "desk-1", "channel": "api", "question": "once", "context": None,
                       "audience": None, "abstained": True, "ambiguous": False, "top_key": None,
                       "elapsed_ms": None})


def test_a_refused_record_is_set_aside_and_the_rest_stored(log, db_url):
    good = dict(uid="a" * 32, kind="feedback", at="2026-11-25T00:00:00+00:00", replica="x", channel="api",
                question="ok", key="", helpful=True)
    bad = {**good, "uid": "b" * 32, "question": None}  # NOT NULL: the database refuses it
    assert log.wait_ready(15)
    rejected = log.backend.insert([good, bad, {**good, "uid": "c" * 32}])
    assert [r["uid"] for r, _ in rejected] == ["b" * 32]
    assert scalar(db_url, "SELECT count(*) FROM feedback") == 2


def test_personal_data_is_masked_before_it_is_stored(log, db_url):
    question = "連絡先 090-1234-5678 / taro@example.jp 〒100-8915 マイナンバー 1234 5678 9012 の特許相談"
    assert log.log_question("visitor", question, NO_MATCH) and log.log_feedback("visitor", question, "", False)
    assert log.flush(15)
    masked = "連絡先 〔電話〕 / 〔メール〕 〔郵便番号〕 マイナンバー 〔個人番号〕 の特許相談"
    assert query(db_url, "SELECT question FROM questions") == [(masked,)]
    assert query(db_url, "SELECT question FROM feedback") == [(masked,)]
    spool = "".join(p.read_text(encoding="utf-8") for p in log.spool_path.parent.glob("spool-*.jsonl"))
    assert "090-1234" not in spool and "taro@" not in spool


def test_data_files_are_this_users_alone(tmp_path):
    data = tmp_path / "data"
    done = subprocess.run([sys.executable, "-m", "chatbot", "staff", "add", "sato", "--password-stdin",
                           "--data-dir", str(data)], input="a-long-password\n", text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0
    assert oct(data.stat().st_mode & 0o777) == "0o700"
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in data.iterdir()} == {"madoguchi.sqlite3": "0o600"}


def test_text_no_database_can_hold_is_made_storable(log, db_url):
    """A lone surrogate (from a JSON API call) and NUL (PostgreSQL's text cannot hold it)."""
    assert log.log_question("api", "a\ud800b\x00c", NO_MATCH)
    assert log.flush(15) and log.rejected == 0
    assert query(db_url, "SELECT question FROM questions") == [("a\ufffdb\ufffdc",)]


def test_version_1_log_is_migrated_without_losing_rows(db_url, tmp_path):
    """Issue 6's desks wrote the version-1 layout (no uid, no replica, no version table)."""
    backend = store.open_backend(db_url, tmp_path)
    _apply(db_url, backend, 1)
    _execute(db_url, "INSERT INTO questions (at, channel, question, abstained, ambiguous) VALUES "
                     "('2026-11-01T01:00:00+00:00', 'visitor', 'old question', 1, 0)")
    assert backend.version() == 1
    log = store.Log(backend, tmp_path / "data", "desk-1")
    try:
        assert log.wait_ready(15) and log.schema == (1, schema.SCHEMA_VERSION)
        log.log_question("api", "new question", NO_MATCH)
        assert log.flush(15)
        assert backend.version() == schema.SCHEMA_VERSION
        assert sorted(query(db_url, "SELECT question, replica FROM questions")) == [
            ("new question", "desk-1"), ("old question", None)]
    finally:
        log.close(2)


def test_a_newer_schema_is_refused_and_records_wait(db_url, tmp_path):
    backend = store.open_backend(db_url, tmp_path)
    backend.migrate()
    _execute(db_url, "UPDATE schema_version SET version = 99")
    log = store.Log(backend, tmp_path / "data", "desk-1")
    try:
        assert log.log_question("api", "kept", NO_MATCH)
        assert not log.wait_ready(3) and "newer than this desk" in log.last_error
        assert log.status()["pending"] == 1 and log.spool_path.stat().st_size > 0
    finally:
        log.close(1)


def test_an_outage_delays_records_but_loses_none(db_url, tmp_path, request, capfd):
    """The database goes away mid-stream (PostgreSQL stopped; SQLite's folder made impossible)."""
    cluster = request.getfixturevalue("pg_cluster") if db_url.startswith("postgresql") else None
    url = db_url
    log = store.open_store(url, tmp_path / "data", "desk-1")
    try:
        log.log_question("api", "before", NO_MATCH)
        assert log.flush(15)
        with Outage(url, cluster):
            started = time.perf_counter()
            uids = [log.log_question("api", f"during {i}", NO_MATCH) for i in range(50)]
            assert all(uids) and time.perf_counter() - started < 5  # acknowledged without the database
            assert eventually(lambda: "データベースに書き込めません" in log.last_error)
            assert log.status()["pending"] == 50
            assert "データベースに書き込めません" in log.stats()["last_error"]  # what the staff view shows
        assert log.flush(30), log.status()
        assert log.last_error == "" and log.status()["pending"] == 0
    finally:
        log.close(2)
    assert scalar(url, "SELECT count(*) FROM questions") == 51
    err = capfd.readouterr().err
    assert "cannot write to" in err and "writing to" in err and "again" in err


WRITER = """
import sys, time
from pathlib import Path
from chatbot import store
log = store.open_store(sys.argv[1], Path(sys.argv[2]), "desk-1")
i = 0
while True:
    uid = log.log_question("api", f"crash {i}", {"abstained": True, "results": []})
    print(uid, flush=True)  # printed = acknowledged
    i += 1
    if i % 50 == 0:
        time.sleep(0.01)
"""


def test_sigkill_loses_no_acknowledged_record(db_url, tmp_path):
    data = tmp_path / "data"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, db_url, str(data)], cwd=REPO, stdout=subprocess.PIPE,
                            text=True)
    acknowledged = []
    try:
        for line in proc.stdout:
            acknowledged.append(line.strip())
            if len(acknowledged) >= 1500:
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    rest = proc.stdout.read().split()
    acknowledged += rest
    assert len(acknowledged) >= 1500
    restarted = store.open_store(db_url, data, "desk-1")  # replays what the killed desk left in its spool
    try:
        assert restarted.flush(30), restarted.status()
    finally:
        restarted.close(2)
    stored = {uid.replace("-", "") for (uid,) in query(db_url, "SELECT uid FROM questions")}
    missing = [uid for uid in acknowledged if uid not in stored]
    assert missing == [], f"{len(missing)} of {len(acknowledged)} acknowledged records missing"


def test_many_threads_and_two_desks_share_one_database(db_url, tmp_path):
    desks = [store.open_store(db_url, tmp_path / "data", name) for name in ("desk-1", "desk-2")]
    threads, each = 8, 60

    def write(t: int) -> None:
        log = desks[t % 2]
        for i in range(each):
            log.log_question("api", f"q{t}-{i}", NO_MATCH if i % 3 else ANSWERED)
            if i % 4 == 0:
                log.log_feedback("visitor", f"q{t}-{i}", "", i % 8 == 0)

    workers = [threading.Thread(target=write, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    try:
        assert all(d.flush(30) for d in desks)
        assert desks[0].stats()["replicas"] == desks[1].stats()["replicas"]  # every desk sees the whole picture
    finally:
        for d in desks:
            d.close(2)
    assert scalar(db_url, "SELECT count(DISTINCT question) FROM questions") == threads * each
    assert scalar(db_url, "SELECT count(*) FROM feedback") == threads * (each // 4)
    assert sorted(query(db_url, "SELECT replica, count(*) FROM questions GROUP BY replica")) == [
        ("desk-1", threads * each // 2), ("desk-2", threads * each // 2)]


def test_an_unwritable_spool_keeps_records_in_memory_and_says_so(db_url, tmp_path, capfd):
    data = tmp_path / "data"
    data.write_text("a file where the data directory should be")
    log = store.open_store(db_url, data, "desk-1")
    try:
        assert log.log_question("api", "in memory", NO_MATCH)  # answered and kept, not raised
        assert "控えファイル" in log.spool_error and "失われます" in log.spool_error
        assert log.flush(15)
    finally:
        log.close(2)
    assert query(db_url, "SELECT question FROM questions") == [("in memory",)]
    assert "cannot write the spool" in capfd.readouterr().err


def test_one_replica_name_per_data_directory(db_url, tmp_path):
    first = store.open_store(db_url, tmp_path / "data", "desk-1")
    try:
        with pytest.raises(StoreError, match="another desk is running as replica 'desk-1'"):
            store.open_store(db_url, tmp_path / "data", "desk-1")
        store.open_store(db_url, tmp_path / "data", "desk-2").close(1)  # another name is fine
    finally:
        first.close(1)


def test_db_command_status_flush_and_clear(db_url, tmp_path):
    data = tmp_path / "data"
    log = store.open_store(db_url, data, "desk-1")
    log.log_question("api", "x", NO_MATCH)
    assert log.flush(15)
    log.close(1)
    # A spool left by a desk that was killed before writing it out
    record = {"uid": "d" * 32, "kind": "feedback", "at": "2026-11-25T00:00:00+00:00", "replica": "gone",
              "channel": "api", "question": "left behind", "key": "", "helpful": False}
    (data / "spool-gone.jsonl").write_text(json.dumps(record) + "\n")

    def db(*args):
        done = subprocess.run([sys.executable, "-m", "chatbot", "db", *args, "--db", db_url, "--data-dir", str(data),
                               "--json"], cwd=REPO, capture_output=True, text=True, timeout=60)
        return done.returncode, json.loads(done.stdout) if done.stdout.strip() else done.stderr

    assert db("status")[1] | {} == {"store": db_url, "schema": schema.SCHEMA_VERSION, "questions": 1, "feedback": 0,
                                    "spools": {"spool-gone.jsonl": 1}}
    code, out = db("flush")
    assert code == 0 and out["feedback"] == 1 and out["flushed"]["spool-gone.jsonl"]["written"] == 1
    code, err = db("clear")
    assert code == 1 and "--yes" in err
    code, out = db("clear", "--yes")
    assert code == 0 and out["deleted"] == {"questions": 1, "feedback": 1}
    assert (out["questions"], out["feedback"]) == (0, 0)


def test_urls_are_checked_and_passwords_never_shown(tmp_path):
    with pytest.raises(StoreError, match="unknown database URL"):
        store.open_backend("mysql://u@h/db", tmp_path)
    with pytest.raises(StoreError, match="names no file"):
        store.open_backend("sqlite:///", tmp_path)
    assert store.open_backend("", tmp_path).label == f"sqlite:///{tmp_path / 'madoguchi.sqlite3'}"
    pg = store.open_backend("postgresql://desk:s3cret@db.example:5432/log?sslmode=require&password=x2", tmp_path)
    assert "s3cret" not in pg.label and "x2" not in pg.label and pg.label.startswith("postgresql://desk:***@db.example")


# -- helpers ---------------------------------------------------------------------------------------

def _execute(url: str, sql: str) -> None:
    if url.startswith("sqlite:///"):
        import sqlite3

        with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
            db.execute(sql)
        return
    import psycopg

    with psycopg.connect(url) as conn:
        conn.execute(sql.replace("', 1, 0)", "', true, false)"))


def _apply(url: str, backend, version: int) -> None:
    """The schema as it was at `version`, written by hand (no version table, as issue 6 left it)."""
    module = __import__(f"chatbot.store.{'sqlite' if url.startswith('sqlite') else 'postgres'}",
                        fromlist=["STEPS"])
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    for v in range(1, version + 1):
        for statement in module.STEPS[v]:
            _execute(url, statement)


# -- what a damaged spool or a changed database must not do (found in review) ---------------------

def _spool_line(kind: str = "question", **fields) -> str:
    record = {"uid": uuid.uuid4().hex, "kind": kind, "at": "2026-11-25T00:00:00.000+00:00", "replica": "desk-1",
              "channel": "api", "question": "spooled", "context": None, "audience": None, "abstained": True,
              "ambiguous": False, "top_key": None, "elapsed_ms": None, **fields}
    if kind == "feedback":
        record = {k: record.get(k) for k in schema.FEEDBACK_FIELDS} | {"kind": "feedback", "key": "", "helpful": False}
    return json.dumps(record, ensure_ascii=False)


def test_a_damaged_spool_is_set_aside_line_by_line_and_the_rest_written(db_url, tmp_path, request):
    """Unreadable, foreign and torn lines: the writer used to die on them (KeyError), count them
    again on every retry while the database was down (pending went negative), or spin on a torn
    last line whose seal was never flushed."""
    cluster = request.getfixturevalue("pg_cluster") if db_url.startswith("postgresql") else None
    store.open_backend(db_url, tmp_path).migrate()
    data = tmp_path / "data"
    data.mkdir()
    lines = [_spool_line(question="first"), "garbage line", json.dumps({"uid": "c" * 32, "kind": "feedback"}),
             json.dumps([1, 2]), _spool_line(question="second"), _spool_line("feedback", question="third")]
    (data / "spool-desk-1.jsonl").write_text("\n".join(lines) + '\n{"uid": "torn', encoding="utf-8")
    log = None
    try:
        with Outage(db_url, cluster):
            log = store.open_store(db_url, data, "desk-1")
            assert eventually(lambda: log.last_error, timeout=10)
            time.sleep(2)  # several retries while the database is away
            assert log.status()["pending"] == 7  # six lines and the sealed torn one, none counted twice
        assert log.flush(20), log.status()
        assert log.status()["rejected"] == 4 and log.last_error == ""
    finally:
        if log is not None:
            log.close(2)
    assert sorted(q for (q,) in query(db_url, "SELECT question FROM questions")) == ["first", "second"]
    assert query(db_url, "SELECT question FROM feedback") == [("third",)]
    set_aside = [json.loads(line) for line in (data / "rejected-desk-1.jsonl").read_text().splitlines()]
    assert len(set_aside) == 4 and all(r["reason"] for r in set_aside)
    assert (data / "spool-desk-1.jsonl").stat().st_size == 0


def test_a_changed_database_delays_records_instead_of_refusing_them(db_url, tmp_path):
    """Without the unique index ON CONFLICT (uid) is invalid: that is the database's state, not the
    record's fault, so the records wait (they used to be set aside one by one)."""
    log = store.open_store(db_url, tmp_path / "data", "desk-1")
    try:
        assert log.wait_ready(15)
        _execute(db_url, "DROP INDEX feedback_uid")
        log.log_feedback("api", "waits", "", True)
        assert eventually(lambda: log.last_error, timeout=10)
        assert log.status()["rejected"] == 0 and log.status()["pending"] == 1
        _execute(db_url, "CREATE UNIQUE INDEX feedback_uid ON feedback (uid)")
        assert log.flush(20), log.status()
    finally:
        log.close(2)
    assert query(db_url, "SELECT question FROM feedback") == [("waits",)]


def test_a_spool_that_keeps_growing_is_compacted(db_url, tmp_path, request, monkeypatch):
    """A writer that never quite catches up rewrites the unwritten tail instead of letting the
    spool grow (it was emptied only when fully caught up)."""
    from chatbot.store import log as log_module

    cluster = request.getfixturevalue("pg_cluster") if db_url.startswith("postgresql") else None
    monkeypatch.setattr(log_module, "BATCH", 5)
    monkeypatch.setattr(log_module, "COMPACT_BYTES", 1000)
    log = store.open_store(db_url, tmp_path / "data", "desk-1")
    try:
        assert log.wait_ready(15)
        with Outage(db_url, cluster):
            for i in range(60):
                log.log_question("api", f"backlog {i}", NO_MATCH)
            first_inode = log.spool_path.stat().st_ino
        assert log.flush(30), log.status()
        assert eventually(lambda: log.spool_path.stat().st_size == 0)
        assert log.spool_path.stat().st_ino != first_inode  # rewritten at least once on the way
    finally:
        log.close(2)
    assert scalar(db_url, "SELECT count(DISTINCT question) FROM questions") == 60


def test_a_role_that_may_only_read_and_insert_can_log(pg_cluster, tmp_path):
    """After a DBA migrated the schema, a desk role with SELECT and INSERT only: every start used to
    run DDL and fail for good (PostgreSQL 15 gives ordinary roles no CREATE on public)."""
    import psycopg

    url = pg_cluster.new_database(f"t_{uuid.uuid4().hex[:16]}")
    store.open_backend(url, tmp_path).migrate()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE ROLE desk LOGIN")
        conn.execute("GRANT SELECT, INSERT ON questions, feedback, schema_version TO desk")
    desk_url = url.replace("madoguchi@", "desk@", 1)
    log = store.open_store(desk_url, tmp_path / "data", "desk-1")
    try:
        log.log_question("api", "inserted by desk", NO_MATCH)
        assert log.flush(15), log.status()
    finally:
        log.close(2)
    assert query(url, "SELECT question FROM questions") == [("inserted by desk",)]


def test_passwords_stay_out_of_errors(tmp_path):
    backend = store.open_backend("postgresql://desk:bad%zzpw@127.0.0.1:1/x", tmp_path)
    with pytest.raises(store.Unavailable) as caught:
        backend.migrate()
    assert "bad%zzpw" not in str(caught.value) and "zzpw" not in str(caught.value)
    with pytest.raises(StoreError) as caught:
        store.open_backend("madoguchi:s3cret@db.example/madoguchi", tmp_path)
    assert "s3cret" not in str(caught.value)


def test_a_status_check_creates_nothing(tmp_path):
    missing = tmp_path / "typo" / "madoguchi.sqlite3"
    backend = store.open_backend(f"sqlite:///{missing}", tmp_path)
    assert backend.count() == {"questions": 0, "feedback": 0} and backend.version() == 0
    backend.clear()
    assert not (tmp_path / "typo").exists()


def test_prune_deletes_only_what_is_older_than_the_retention(db_url, tmp_path):
    from datetime import datetime, timedelta, timezone

    log = store.open_store(db_url, tmp_path / "data", "desk-1")
    try:
        assert log.log_question("visitor", "new", NO_MATCH) and log.log_feedback("visitor", "new", "", True)
        assert log.flush(15)
    finally:
        log.close(2)
    old = (datetime.now(timezone.utc) - timedelta(days=100)).isoformat(timespec="milliseconds")
    for table in ("questions", "feedback"):
        _execute(db_url, f"INSERT INTO {table} (at, channel, question, {'abstained, ambiguous' if table == 'questions' else 'helpful'})"
                         f" VALUES ('{old}', 'visitor', 'old', {'TRUE, FALSE' if table == 'questions' else 'TRUE'})")
    done = subprocess.run([sys.executable, "-m", "chatbot", "db", "prune", "--older-than", "90d", "--db", db_url,
                           "--data-dir", str(tmp_path / "data"), "--json"], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    out = json.loads(done.stdout)
    assert out["deleted"] == {"questions": 1, "feedback": 1} and (out["questions"], out["feedback"]) == (1, 1)
    assert query(db_url, "SELECT question FROM questions") == [("new",)]
    bad = subprocess.run([sys.executable, "-m", "chatbot", "db", "prune", "--older-than", "soon", "--db", db_url],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "90d" in bad.stderr
