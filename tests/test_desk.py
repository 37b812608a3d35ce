"""The desk (app.py) on the real index and model: its /search API through gradio_client, what it
logs (on each backend: the `desk` fixture runs once per backend), and the HTML it renders
(escaping first, markup second)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chatbot import corpus
from chatbot.desk import render
from logdb import query_when

REPO = Path(__file__).resolve().parent.parent
ASK_KEYS = {"query", "abstained", "ambiguous", "decision", "results", "confidence", "followed_context"}
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


def test_suggest_html_offers_the_nearest_as_choices_and_the_staff():
    evil = "<script>alert(1)</script>"
    results = [{"key": f"{i}.(1)", "title": f"{evil}{i}", "breadcrumb": "b", "text": "本文", "urls": []}
               for i in range(1, 6)]
    out = render.answer_html({"query": evil, "abstained": False, "ambiguous": False, "decision": "suggest",
                              "results": results}, {})
    assert "近いと思われる施策" in out and "窓口の担当者" in out
    assert out.count("<li>") == render.SUGGESTED and "<script" not in out and render.audit(out) == []


def test_abstained_html_points_to_the_desks():
    out = render.abstained_html()
    assert 'href="https://chizai-portal.inpit.go.jp/"' in out and 'href="https://faq.inpit.go.jp/"' in out


def test_qr_is_inline_svg_of_the_url():
    programme = next(p for p in corpus.load(REPO / "corpus") if p.key == "6.(1)")
    out = render.qr_html(programme)
    assert "<svg" in out and programme.urls[0] in out and "<img" not in out


# -- the running desk ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def client(desk):
    from gradio_client import Client

    return Client(desk.url, verbose=False)


def test_desk_builds_a_missing_index_on_first_start_and_loads_a_current_one(desk, lean_index):
    """The SQLite desk started on an empty index directory, the PostgreSQL one on the session's
    built index (tests/conftest.py)."""
    assert any("building the index" in line for line in desk.output) == (desk.index_dir != lean_index)


def test_only_search_and_feedback_are_documented(client):
    assert list(client.view_api(print_info=False, return_format="dict")["named_endpoints"]) == ["/search", "/feedback"]


def test_search_returns_the_ask_json(client):
    out = client.predict("J-PlatPatで特許を検索したい", 5, "", api_name="/search")
    assert set(out) == ASK_KEYS
    assert set(out["results"][0]) == RESULT_KEYS
    assert out["results"][0]["key"] == "6.(1)" and not out["abstained"]
    assert "https://www.j-platpat.inpit.go.jp/" in out["results"][0]["urls"]


def test_search_equals_the_engine(client, desk, encoder):
    """/search gives what `python -m chatbot ask --json` prints: Searcher.search(...).to_json()."""
    from chatbot import index, search

    searcher = search.Searcher(index.load(desk.index_dir, model_id=encoder.model_id), encoder, bank_file=desk.bank)
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
    expected = ("api", "今日の天気は？")
    assert expected in query_when(desk.log_url, "SELECT channel, question FROM questions WHERE abstained",
                                  lambda r: expected in r)


def test_bad_context_is_an_error_answer(client):
    out = client.predict("料金は？", 5, "99.(1)", api_name="/search")
    assert out["abstained"] and out["results"] == [] and "99.(1)" in out["error"]


def test_staff_feedback_is_stored_with_the_staff_name(desk):
    console = desk.console()
    flags, table = console.predict("起業したばかりで知財の専門家に相談したい", api_name="/staff_search")[:2]  # (State is not an output)
    assert "ms" in flags and table["data"][0][1]
    assert console.predict(api_name="/staff_feedback_down").startswith("記録しました")
    expected = ("起業したばかりで知財の専門家に相談したい", table["data"][0][1], 0, desk.staff[0])
    # other tests' console votes are in this desk's log too: wait for this one
    assert expected in query_when(desk.log_url, "SELECT question, key, helpful, staff FROM feedback "
                                  "WHERE channel = 'staff'", lambda found: expected in found)


def test_a_console_correction_answers_the_next_visitor(desk, client):
    question = "和菓子の屋号を真似されないか心配、どこで聞ける？"
    console = desk.console()
    console.predict(question, api_name="/staff_search")
    assert console.predict("8.(1)", api_name="/staff_correct").startswith("質問バンクに")
    out = client.predict(question, 5, "", api_name="/search")
    assert out["decision"] == "answer" and out["results"][0]["key"] == "8.(1)"
    by = [json.loads(line)["by"] for line in desk.bank.read_text(encoding="utf-8").splitlines()]
    assert desk.staff[0] in by


@pytest.mark.parametrize("question", ["<script>alert(1)</script>", '<img src=x onerror="alert(1)">特許の相談'])
def test_chat_shows_markup_questions_as_text(client, question):
    history = client.predict(question, [], api_name="/ask")[0]
    user, answer = history[-2]["content"][0]["text"], history[-1]["content"][0]["text"]
    assert user == render.esc(question)
    assert "<script" not in answer and "<img" not in answer and "onerror=" not in answer.replace("onerror=&quot;", "")
