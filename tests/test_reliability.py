"""Issue 8, reliability: bad input at every entry point, a property test over search and rendering,
and broken index state (on copies of the session's index of the real corpus, tests/conftest.py).

What tests/test_engine.py and tests/test_desk.py already cover is not repeated: the engine's
empty/huge/odd questions, a missing index, a truncated faiss file, a stale corpus, another model,
an interrupted build, and <script>/<img> questions in the chat.
"""

from __future__ import annotations

import http.client
import json
import urllib.parse
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatbot import index, search
from chatbot.desk import render
from chatbot.desk.render import audit  # the renderer's own tag/attribute contract
from chatbot.errors import IndexStateError

from desk_probe import DeskProcess
from index_copies import copy_of

REPO = Path(__file__).resolve().parent.parent
LIMIT = search.MAX_QUERY_CHARS
EMPTY_MESSAGE = "質問を入力してください。"
LONG_MESSAGE = f"{LIMIT}文字以内でお願いします。"  # the engine's limit, stated in characters

# Each entry point gets every one of these.
NASTY = {
    "empty": "",
    "whitespace": " \u3000\n\t ",
    "huge": "特許の相談" * 1_000,  # 5 000 characters: over the question limit, under the body limit
    "control": "特許\x00の\x07相談\x1b[31m\x7f\x85",
    "html": "<script>alert(1)</script><b onmouseover=alert(2)>特許</b>",
    "markdown": "[相談](javascript:alert(1)) ![x](https://example.invalid/x.png) **特許**",
    "emoji_zwj": "👨‍👩‍👧‍👦🏳️‍🌈 知財の相談",
    "rtl": "\u202eسلام عليكم \u200fשלום\u202c",
    "punctuation": "？？？！！！...,,,「」",
}
EMPTYISH = {"empty", "whitespace"}


# -- fixtures ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def searcher(built, encoder):
    return search.Searcher(built, encoder)


# -- HTML that the desk renders: only its own tags, never the input's ---------------------------

def test_audit_catches_injected_markup():
    """The checker itself: it must flag what the property tests claim never appears."""
    assert audit("<p>ok <mark>x</mark></p>") == []
    assert audit("<p><script>x</script><img src=x onerror=y><a href='javascript:1'>") != []


# -- property tests: search and rendering over arbitrary text ---------------------------------------

NASTY_CHARS = list("<>&\"'`/\\=;:()[]!*_#~|{}") + ["\x00", "\x1b", "\x7f", "\u0085", "\u200b", "\u200d", "\u202e",
                                                   "\u2028", "\ufeff", "\ud800", "\udfff", "\ufffd", "&amp;", "&lt;",
                                                   "<script>", "</mark>", "javascript:", "特許", "相談", "ＩＰＡＳ",
                                                   "👨‍👩‍👧", "🏳️‍🌈", "\u3000", "\n", "\r\n"]
ANY_TEXT = st.one_of(
    st.text(max_size=300),
    st.lists(st.sampled_from(NASTY_CHARS), max_size=60).map("".join),
    st.tuples(st.text(max_size=40), st.sampled_from(["<script>alert(1)</script>", "<img src=x onerror=alert(1)>",
                                                    "<mark>", "&lt;b&gt;", "<!--", "<svg/onload=alert(1)>"]),
              st.text(max_size=40)).map("".join),
)
ANSWER_KEYS = {"query", "abstained", "ambiguous", "decision", "results", "confidence", "followed_context"}
RESULT_KEYS = {"key", "title", "section", "text", "urls", "score", "subitem", "breadcrumb"}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(question=ANY_TEXT)
def test_search_and_chat_rendering_hold_for_any_text(searcher, question):
    out = searcher.search(question).to_json()
    assert ANSWER_KEYS <= set(out) <= ANSWER_KEYS | {"message"}
    json.dumps(out, ensure_ascii=False).encode("utf-8")  # the API and the CLI can send it
    assert isinstance(out["abstained"], bool) and isinstance(out["results"], list)
    for r in out["results"]:
        assert set(r) == RESULT_KEYS and isinstance(r["score"], float)
    if out.get("message"):
        assert out["abstained"] and out["results"] == []
    html = render.answer_html(out, {})
    assert audit(html) == [], (question, html[:500])
    assert "<script" not in html.lower()
    shown = render.esc(question)  # the chat's user bubble (ui.respond)
    assert audit(shown) == [] and "<" not in shown


@settings(max_examples=500, deadline=None)
@given(title=ANY_TEXT, body=ANY_TEXT, question=ANY_TEXT, url=ANY_TEXT)
def test_rendering_never_passes_markup_through(title, body, question, url):
    """Corpus fields and the question are all hostile here; only render.py's own tags come out."""
    result = {"key": "1.(1)", "title": title, "breadcrumb": title, "text": body, "urls": [url, "https://ok.example/"],
              "score": 1.0}
    answer = {"query": question, "abstained": False, "ambiguous": True, "followed_context": False,
              "results": [result, dict(result)]}
    html = render.answer_html(answer, {url: title})
    assert audit(html) == [], html[:500]
    assert audit(render.highlight(body, question)) == []
    assert audit(render.abstained_html(question)) == []
    for text in (title, body, question):  # a tag typed anywhere reaches the page only as &lt;…
        if "<script" in text.lower():
            assert "<script" not in html.lower()


# -- the /search API, the chat and the staff search on the running desk ------------------------------

@pytest.fixture(scope="module")
def client(desk):
    from gradio_client import Client

    return Client(desk.url, verbose=False)


@pytest.fixture(scope="module")
def console(desk):
    return desk.console()


def raw_call(desk, api: str, data: list, staff: bool = False) -> tuple[str, object]:
    """POST /gradio_api/call/<api> with ASCII-escaped JSON (gradio_client cannot send a lone surrogate);
    `staff`: to the console, logged in."""
    host, port = desk.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    prefix, headers = "", {"Content-Type": "application/json"}
    try:
        if staff:
            prefix = "/staff"
            conn.request("POST", "/staff/login", body=urllib.parse.urlencode(dict(zip(("username", "password"), desk.staff))),
                         headers={"Content-Type": "application/x-www-form-urlencoded"})
            response = conn.getresponse()
            response.read()
            cookies = [c.split(";", 1)[0] for c in response.headers.get_all("set-cookie") or []]
            assert response.status == 200 and cookies, response.status
            headers["Cookie"] = "; ".join(cookies)
        conn.request("POST", f"{prefix}/gradio_api/call/{api}", body=json.dumps({"data": data}), headers=headers)
        response = conn.getresponse()
        assert response.status == 200, response.read()
        event_id = json.loads(response.read())["event_id"]
        conn.request("GET", f"{prefix}/gradio_api/call/{api}/{event_id}", headers=headers)
        stream = conn.getresponse().read().decode("utf-8")
    finally:
        conn.close()
    kind = stream.split("\n", 1)[0].removeprefix("event: ").strip()
    payload = stream.split("data: ", 1)[1].strip() if "data: " in stream else "null"
    return kind, json.loads(payload)


def new_console(desk, since: int) -> str:
    return "\n".join(desk.output[since:])


@pytest.mark.parametrize("name", list(NASTY))
def test_api_answers_every_bad_input(client, desk, name):
    since = len(desk.output)
    question = NASTY[name]
    out = client.predict(question, 5, "", api_name="/search")
    assert ANSWER_KEYS <= set(out) and "error" not in out
    assert out["query"] == question[:1000]  # echoed as sent (no surrogates here), cut to the question limit
    if name in EMPTYISH:
        assert out["message"] == EMPTY_MESSAGE and out["abstained"] and out["results"] == []
    elif name == "huge":
        assert LONG_MESSAGE in out["message"] and f"{len(question)}文字" in out["message"]
    else:
        assert "message" not in out
    assert "Traceback" not in new_console(desk, since)


@pytest.mark.parametrize("name", list(NASTY))
def test_chat_renders_every_bad_input_as_text(client, desk, name):
    since = len(desk.output)
    question = NASTY[name]
    history = client.predict(question, [], api_name="/ask")[0]
    if name in EMPTYISH:
        assert history == []  # nothing asked, nothing shown
        return
    user, answer = history[-2]["content"][0]["text"], history[-1]["content"][0]["text"]
    assert user == render.esc(question[:1000]) and audit(user) == []  # as the desk took it: cut to the limit
    assert audit(answer) == [] and "<script" not in answer.lower()
    if "<" in question:
        assert question not in user + answer
    if name == "huge":
        assert LONG_MESSAGE in answer
    assert "Traceback" not in new_console(desk, since)


@pytest.mark.parametrize("name", list(NASTY))
def test_staff_search_answers_every_bad_input(console, desk, name):
    since = len(desk.output)
    flags, table = console.predict(NASTY[name], api_name="/staff_search")[:2]
    if name in EMPTYISH:
        assert flags == f"⚠️ {EMPTY_MESSAGE}"
    elif name == "huge":
        assert LONG_MESSAGE in flags
    else:
        assert flags.startswith("時間") and len(table["data"]) == 10
    assert "Traceback" not in new_console(desk, since)


@pytest.mark.parametrize("api, data", [
    ("search", ["\ud800壊れた\udfff", 5, ""]),
    ("ask", ["\ud800壊れた", []]),
    ("staff_search", ["\ud800壊れた"]),
])
def test_lone_surrogates_get_an_answer(desk, api, data):
    """Fixed in Issue 8: the log's INSERT and the JSON reply raised UnicodeEncodeError (an error event)."""
    since = len(desk.output)
    kind, payload = raw_call(desk, api, data, staff=api.startswith("staff"))
    assert kind == "complete", payload
    if api == "search":
        assert payload[0]["query"] == "\ufffd壊れた\ufffd" and "error" not in payload[0]
    elif api == "ask":
        assert payload[0][-2]["content"][0]["text"] == "\ufffd壊れた"
    assert "Traceback" not in new_console(desk, since)


@pytest.mark.parametrize("top_k", [None, "abc", 1e309, -1, 10**12])
def test_api_bad_top_k_is_an_error_answer(desk, top_k):
    """Fixed in Issue 8: null or "abc" raised inside the handler (an error event, a traceback)."""
    kind, payload = raw_call(desk, "search", ["特許の相談", top_k, ""])
    if top_k is None:
        assert kind == "complete" and payload[0]["results"]  # the default, 5
        return
    assert kind == "complete", payload
    assert payload[0]["results"] == [] and "top_k" in payload[0]["error"]


# -- the CLI -----------------------------------------------------------------------------------

def cli(built, *args, stdin: bytes | None = None):
    env = {**os.environ, "MADOGUCHI_INDEX": str(built.root.parent)}
    return subprocess.run([sys.executable, "-m", "chatbot", *args], cwd=REPO, env=env, input=stdin,
                          capture_output=True, timeout=180)


def test_cli_with_a_100k_character_argument(built):
    question = "a" * 100_000  # ASCII: a single argv string may not exceed 128 KiB on Linux
    done = cli(built, "ask", question)
    assert done.returncode == 0 and b"Traceback" not in done.stderr
    assert done.stdout.decode().strip() == f"質問が長すぎます（100000文字）。{LONG_MESSAGE}"
    done = cli(built, "ask", question, "--json")
    out = json.loads(done.stdout)
    assert out["results"] == [] and LONG_MESSAGE in out["message"]


def test_cli_stdin_answers_every_nasty_line(built):
    lines = [v.replace("\n", " ") for v in NASTY.values()]  # one question a line
    stdin = "\n".join(lines).encode("utf-8", "surrogatepass") + b"\n\xc3\x28\xa0\xa1 invalid utf-8\n\xed\xa0\x80\n"
    done = cli(built, "ask", stdin=stdin)
    assert done.returncode == 0 and b"Traceback" not in done.stderr, done.stderr.decode()[-2000:]
    outs = [json.loads(line) for line in done.stdout.decode("utf-8").split("\n") if line]  # not splitlines(): U+0085
    assert len(outs) == len(lines) + 2
    for out in outs:
        assert ANSWER_KEYS <= set(out)
    assert outs[list(NASTY).index("huge")]["message"].endswith(LONG_MESSAGE)
    assert outs[-1]["query"] == "\ufffd\ufffd\ufffd"  # an encoded surrogate is invalid UTF-8 too


def test_cli_jsonl_lone_surrogate_with_a_bad_context(built):
    """Fixed in Issue 8: the error answer echoed the raw query and print() raised UnicodeEncodeError."""
    stdin = b'{"query": "\\ud800x", "context": "99.(1)"}\n{"query": "\\udfff"}\n'
    done = cli(built, "ask", "--jsonl", stdin=stdin)
    assert done.returncode == 0 and b"Traceback" not in done.stderr, done.stderr.decode()[-2000:]
    first, second = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert first["query"] == "\ufffdx" and "unknown programme key" in first["error"]
    assert second["query"] == "\ufffd"


# -- broken index state ---------------------------------------------------------------------------

def _rewrite(path: Path, data: bytes | str) -> None:
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))


def _first_line_prefix(path: Path, prefix: str) -> None:
    path.write_text(prefix + path.read_text(encoding="utf-8"), encoding="utf-8")


BROKEN = {
    # manifest.json
    "manifest not json": lambda r, b: _rewrite(b / "manifest.json", "{not json"),
    "manifest empty object": lambda r, b: _rewrite(b / "manifest.json", "{}"),  # was a raw KeyError
    "manifest a list": lambda r, b: _rewrite(b / "manifest.json", "[]"),  # was a raw AttributeError
    "manifest binary": lambda r, b: _rewrite(b / "manifest.json", b"\xff\xfe\x00garbage"),
    "manifest missing": lambda r, b: (b / "manifest.json").unlink(),
    # passages.jsonl
    "passages garbage line": lambda r, b: _first_line_prefix(b / "passages.jsonl", "garbage\n"),
    "passages a list line": lambda r, b: _first_line_prefix(b / "passages.jsonl", "[]\n"),  # was AttributeError
    "passages unknown field": lambda r, b: _first_line_prefix(b / "passages.jsonl", '{"zz": 1}\n'),
    "passages empty": lambda r, b: _rewrite(b / "passages.jsonl", ""),
    "passages cut mid-character": lambda r, b: _rewrite(b / "passages.jsonl",
                                                        (b / "passages.jsonl").read_bytes()[:5001]),
    # bm25
    "bm25 vocab not json": lambda r, b: _rewrite(b / "bm25" / "vocab.index.json", b"\xff garbage"),
    "bm25 params empty": lambda r, b: _rewrite(b / "bm25" / "params.index.json", "{}"),
    "bm25 scores truncated": lambda r, b: _rewrite(b / "bm25" / "data.csc.index.npy",
                                                   (b / "bm25" / "data.csc.index.npy").read_bytes()[:300]),
    "bm25 indptr garbage": lambda r, b: _rewrite(b / "bm25" / "indptr.csc.index.npy", b"\x93NUMPY garbage"),
    "bm25 directory missing": lambda r, b: shutil.rmtree(b / "bm25"),
    # CURRENT
    "CURRENT names a missing build": lambda r, b: _rewrite(r / "CURRENT", "b-20000101T000000-gone00\n"),
    "CURRENT empty": lambda r, b: _rewrite(r / "CURRENT", ""),
    "CURRENT binary": lambda r, b: _rewrite(r / "CURRENT", b"\xff\xfe\x00"),  # was UnicodeDecodeError
    "CURRENT a directory": lambda r, b: ((r / "CURRENT").unlink(), (r / "CURRENT").mkdir()),  # was IsADirectoryError
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_index_is_refused_clearly_and_the_loaded_one_keeps_answering(built, encoder, tmp_path, case):
    root = copy_of(built, tmp_path)
    running = search.Searcher(index.load(root, corpus_dir=REPO / "corpus", model_id=encoder.model_id), encoder)
    BROKEN[case](root, root / built.root.name)
    with pytest.raises(IndexStateError) as refused:
        index.load(root, corpus_dir=REPO / "corpus", model_id=encoder.model_id)
    message = str(refused.value)
    assert "run `python -m chatbot build`" in message and "\n" not in message
    if case.startswith("CURRENT names"):
        assert "b-20000101T000000-gone00" in message and "not in" in message
    # The index a desk or a CLI already has in memory still answers.
    assert running.search("J-PlatPatで特許を検索したい").results[0].key == "6.(1)"


def test_broken_index_is_one_line_from_the_cli_and_a_rebuild_restores_it(built, encoder, tmp_path):
    root = copy_of(built, tmp_path)
    _rewrite(root / built.root.name / "manifest.json", "{}")
    env = {**os.environ, "MADOGUCHI_INDEX": str(root)}
    done = subprocess.run([sys.executable, "-m", "chatbot", "ask", "IPAS"], cwd=REPO, env=env,
                          capture_output=True, timeout=120)
    err = done.stderr.decode()
    assert done.returncode == 1 and err.count("\n") == 1 and "python -m chatbot build" in err and "Traceback" not in err
    rebuilt = index.build(REPO / "corpus", root, encoder, progress=False)
    assert index.load(root, corpus_dir=REPO / "corpus").root == rebuilt.root


def test_index_dir_that_is_a_file_is_refused_with_what_to_set(built, encoder, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the index directory should be")
    for root in (blocker, blocker / "index"):
        with pytest.raises(IndexStateError, match="cannot write the index .*MADOGUCHI_INDEX"):
            index.build(REPO / "corpus", root, encoder, progress=False)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through chmod 0555; "
                    "test_read_only_index_dir_keeps_the_previous_build covers it with a read-only bind mount")
def test_index_dir_without_write_permission(built, encoder, tmp_path):
    root = copy_of(built, tmp_path)
    root.chmod(0o555)
    try:
        with pytest.raises(IndexStateError, match="cannot write the index"):
            index.build(REPO / "corpus", root, encoder, progress=False)
        assert index.load(root).root.name == built.root.name
    finally:
        root.chmod(0o755)


READ_ONLY_BUILD = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from chatbot import embed, index, search
    from chatbot.errors import IndexStateError
    root, corpus = Path(sys.argv[1]), Path(sys.argv[2])
    encoder = embed.load_encoder()
    try:
        index.build(corpus, root, encoder, progress=False)
        refused = ""
    except IndexStateError as e:
        refused = str(e)
    kept = index.load(root, corpus_dir=corpus, model_id=encoder.model_id)
    top = search.Searcher(kept, encoder).search("J-PlatPatで特許を検索したい").results[0].key
    print(json.dumps({"refused": refused, "kept": kept.root.name, "top": top}))
""")


def test_read_only_index_dir_keeps_the_previous_build(built, tmp_path):
    """A read-only bind mount over the index directory (in a private mount namespace, so nothing
    outside this test sees it): root cannot write through it, unlike chmod."""
    if not shutil.which("unshare"):
        pytest.skip("no unshare(1)")
    root = copy_of(built, tmp_path)
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount --bind -o ro {root} {root} && true"],
                           capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a private read-only bind mount here: {probe.stderr.decode().strip()}")
    script = tmp_path / "ro_build.py"
    script.write_text(READ_ONLY_BUILD)
    done = subprocess.run(["unshare", "-m", "sh", "-c",
                           f'mount --bind -o ro "$1" "$1" && exec "{sys.executable}" "$2" "$1" "$3"',
                           "sh", str(root), str(script), str(REPO / "corpus")],
                          cwd=REPO, capture_output=True, timeout=180,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, (done.stdout.decode()[-1000:], done.stderr.decode()[-3000:])
    out = json.loads(done.stdout.decode().strip().splitlines()[-1])
    assert "cannot write the index" in out["refused"] and "Read-only file system" in out["refused"]
    assert "MADOGUCHI_INDEX" in out["refused"]
    assert out["kept"] == built.root.name and out["top"] == "6.(1)"
    assert sorted(p.name for p in root.iterdir()) == sorted(["CURRENT", built.root.name])


def test_corpus_edited_while_the_desk_runs_is_rebuilt_on_next_start(built, tmp_path):
    corpus = tmp_path / "corpus"
    shutil.copytree(REPO / "corpus", corpus)
    root = copy_of(built, tmp_path)
    first = DeskProcess(root, tmp_path / "data", corpus_dir=corpus)
    try:
        assert not any("building the index" in line for line in first.output)
        with (corpus / "chapter5.md").open("a", encoding="utf-8") as f:
            f.write("\n- 窓口で追記された一文。\n")
        from gradio_client import Client

        out = Client(first.url, verbose=False).predict("J-PlatPatで特許を検索したい", 3, "", api_name="/search")
        assert out["results"][0]["key"] == "6.(1)"  # the running desk keeps its loaded index
    finally:
        first.stop()
    second = DeskProcess(root, tmp_path / "data", corpus_dir=corpus)
    try:
        console = "\n".join(second.output)
        assert f"the corpus in {corpus} changed since the build" in console
        assert "building the index" in console and "Traceback" not in console
        assert index.load(root, corpus_dir=corpus).root.name != built.root.name
    finally:
        second.stop()


def test_desk_start_rebuilds_over_a_damaged_index(built, tmp_path):
    """A damaged CURRENT made app.py's start crash (UnicodeDecodeError, not an IndexStateError, so no
    rebuild); build() then tripped over the same file. Now the desk says so and rebuilds."""
    root = copy_of(built, tmp_path)
    _rewrite(root / "CURRENT", b"\xff\xfe\x00")
    desk = DeskProcess(root, tmp_path / "data")
    try:
        console = "\n".join(desk.output)
        assert "CURRENT is damaged" in console and "building the index" in console and "Traceback" not in console
        assert index.load(root, corpus_dir=REPO / "corpus").root.name != built.root.name
    finally:
        desk.stop()


def test_desks_started_together_on_a_stale_index_build_it_once(built, tmp_path):
    """Two desks on one empty index directory: each used to rebuild it, and the first to finish
    removed the other's half-written build as a leftover. Builds now take turns under a lock, and
    the second desk loads what the first built."""
    root = tmp_path / "index"
    starting = [threading.Thread(target=lambda i=i: desks.__setitem__(i, DeskProcess(root, tmp_path / f"data{i}")))
                for i in range(2)]
    desks: dict[int, DeskProcess] = {}
    for t in starting:
        t.start()
    for t in starting:
        t.join()
    try:
        assert len(desks) == 2, "a desk did not start"
        for desk in desks.values():
            out = raw_call(desk, "search", ["J-PlatPatで特許を検索したい", 3, ""])[1][0]
            assert out["results"][0]["key"] == "6.(1)"
        builds = [p.name for p in root.iterdir() if p.name.startswith(("b-", ".tmp-"))]
        assert len(builds) == 1, builds
    finally:
        for desk in desks.values():
            desk.stop()
