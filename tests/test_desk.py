"""The desk (app.py) on the real index and model: its /search API through gradio_client, the log
in SQLite, and the HTML it renders (escaping first, markup second)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from chatbot import corpus
from chatbot.desk import render
from chatbot.desk.store import SQLiteStore

REPO = Path(__file__).resolve().parent.parent
ASK_KEYS = {"query", "abstained", "ambiguous", "results", "confidence", "followed_context"}
RESULT_KEYS = {"key", "title", "section", "text", "urls", "score", "subitem", "breadcrumb"}


# -- rendering (no server) ---------------------------------------------------------------------

def test_highlight_escapes_then_marks():
    assert render.highlight("<b>特許</b> & 特許庁", "特許") == "&lt;b&gt;<mark>特許</mark>&lt;/b&gt; &amp; <mark>特許</mark>庁"


def test_highlight_matches_full_width_text_and_keeps_lines():
    assert render.highlight("ＩＰＡＳの支援\n- 面談", "IPASとは") == "<mark>ＩＰＡＳ</mark>の支援<br>- 面談"


def test_highlight_never_marks_inside_an_entity():
    # "amp" / "lt" are terms of this question, but only the raw text is searched
    assert render.highlight("a&b<c", "amp lt") == "a&amp;b&lt;c"


def test_answer_html_escapes_question_and_corpus():
    evil = '<img src=x onerror="alert(1)">'
    result = {"key": "1.(1)", "title": evil, "breadcrumb": "1 › <script>", "text": f"本文 {evil}",
              "urls": ["https://example.jp/?a=1&b=2", "javascript:alert(1)"], "score": 1.0}
    out = render.answer_html({"query": evil, "abstained": False, "ambiguous": False, "followed_context": False,
                              "results": [result]}, {})
    assert "<img" not in out and "<script" not in out and 'href="javascript' not in out
    assert '<h3 class="desk-title">&lt;img src=x onerror=&quot;alert(1)&quot;&gt;</h3>' in out
    assert '<a href="https://example.jp/?a=1&amp;b=2" target="_blank" rel="noopener noreferrer">' in out
    assert "<li>javascript:alert(1)</li>" in out  # not a link


def test_abstained_html_points_to_the_desks():
    out = render.abstained_html()
    assert 'href="https://chizai-portal.inpit.go.jp/"' in out and 'href="https://faq.inpit.go.jp/"' in out


def test_qr_is_inline_svg_of_the_url():
    programme = next(p for p in corpus.load(REPO / "corpus") if p.key == "6.(1)")
    out = render.qr_html(programme)
    assert "<svg" in out and programme.urls[0] in out and "<img" not in out


def test_store_counts_questions_no_matches_and_feedback(tmp_path):
    store = SQLiteStore(tmp_path / "new" / "data")  # created on first use
    hit = {"abstained": False, "ambiguous": True, "results": [{"key": "6.(1)"}]}
    miss = {"abstained": True, "ambiguous": False, "results": []}
    for question, answer in [("J-PlatPat", hit), ("天気", miss), ("天気", miss), ("株価", miss)]:
        store.log_question("visitor", question, answer)
    store.log_feedback("visitor", "J-PlatPat", "6.(1)", True)
    store.log_feedback("staff", "天気", "", False)
    stats = store.stats()
    assert stats["questions"] == 4 and stats["no_match"] == [("天気", 2), ("株価", 1)]
    assert [(n, m) for _, n, m in stats["per_day"]] == [(4, 3)]
    assert (stats["helpful"], stats["unhelpful"]) == (1, 1) and store.last_error == ""
    with sqlite3.connect(store.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_store_survives_an_unwritable_directory(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    store = SQLiteStore(blocker / "data")
    store.log_feedback("visitor", "q", "1.(1)", True)  # must not raise
    assert store.last_error and "記録できませんでした" in capsys.readouterr().err
    assert store.stats()["questions"] == 0


# -- the running desk ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def client(desk):
    from gradio_client import Client

    return Client(desk.url, verbose=False)


def rows(desk, sql: str) -> list[tuple]:
    with sqlite3.connect(desk.db) as db:
        return db.execute(sql).fetchall()


def test_desk_built_its_index_on_first_start(desk):
    assert any("building the index" in line for line in desk.output)


def test_only_search_is_documented(client):
    assert list(client.view_api(print_info=False, return_format="dict")["named_endpoints"]) == ["/search"]


def test_search_returns_the_ask_json(client):
    out = client.predict("J-PlatPatで特許を検索したい", 5, "", api_name="/search")
    assert set(out) == ASK_KEYS
    assert set(out["results"][0]) == RESULT_KEYS
    assert out["results"][0]["key"] == "6.(1)" and not out["abstained"]
    assert "https://www.j-platpat.inpit.go.jp/" in out["results"][0]["urls"]


def test_search_equals_the_engine(client, desk):
    """/search gives what `python -m chatbot ask --json` prints: Searcher.search(...).to_json()."""
    from chatbot import config, embed, index, search

    encoder = embed.load_encoder(config.model_name())
    searcher = search.Searcher(index.load(desk.index_dir, model_id=encoder.model_id), encoder)
    for question, context in [("J-PlatPatで特許を検索したい", ""), ("それの料金は？", "6.(1)"), ("今日の天気は？", "")]:
        expected = searcher.search(question, top_k=5, context=context or None).to_json()
        # numpy scalars (e.g. a np.bool_ flag) as JSON would carry them
        expected = json.loads(json.dumps(expected, default=lambda o: o.item()))
        assert client.predict(question, 5, context, api_name="/search") == expected


def test_follow_up_stays_on_the_context(client):
    out = client.predict("それの料金は？", 3, "6.(1)", api_name="/search")
    assert out["followed_context"] and out["results"][0]["key"] == "6.(1)"


def test_off_topic_abstains_and_is_logged(client, desk):
    out = client.predict("今日の天気は？", 5, "", api_name="/search")
    assert out["abstained"] and out["results"] == []
    assert ("api", "今日の天気は？") in rows(desk, "SELECT channel, question FROM questions WHERE abstained = 1")


def test_bad_context_is_an_error_answer(client):
    out = client.predict("料金は？", 5, "99.(1)", api_name="/search")
    assert out["abstained"] and out["results"] == [] and "99.(1)" in out["error"]


def test_staff_feedback_is_stored(client, desk):
    flags, table = client.predict("起業したばかりで知財の専門家に相談したい", api_name="/staff_search")[:2]  # (State is not an output)
    assert "ms" in flags and table["data"][0][1]
    assert client.predict(api_name="/staff_feedback_down").startswith("記録しました")
    question, key, helpful = rows(desk, "SELECT question, key, helpful FROM feedback WHERE channel = 'staff'")[-1]
    assert (question, key, helpful) == ("起業したばかりで知財の専門家に相談したい", table["data"][0][1], 0)


@pytest.mark.parametrize("question", ["<script>alert(1)</script>", '<img src=x onerror="alert(1)">特許の相談'])
def test_chat_shows_markup_questions_as_text(client, question):
    history = client.predict(question, [], api_name="/ask")[0]
    user, answer = history[-2]["content"][0]["text"], history[-1]["content"][0]["text"]
    assert user == render.esc(question)
    assert "<script" not in answer and "<img" not in answer and "onerror=" not in answer.replace("onerror=&quot;", "")
