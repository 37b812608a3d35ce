"""Passages: bounded, sentence-aligned, never crossing a programme or sub-item, verbatim."""

from pathlib import Path

import pytest

from chatbot import corpus, passages

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def programmes():
    return corpus.load(REPO / "corpus")


@pytest.mark.parametrize("max_chars", [80, 150, 300, 600])
def test_bounded_length_and_full_coverage(programmes, max_chars):
    ps = [p for p in passages.split(programmes, max_chars) if not p.profile]
    assert all(0 < len(p.text.replace("\n", "")) <= max_chars for p in ps)
    for programme in programmes:
        mine = "".join(p.text.replace("\n", "") for p in ps if p.key == programme.key)
        body = "".join(b.text.replace("\n", "") for b in programme.blocks)
        assert mine == body, programme.key  # every character, in order, nothing twice


def test_passages_are_verbatim_corpus_lines(programmes):
    corpus_lines = set((REPO / "corpus" / "chapter5.md").read_text(encoding="utf-8").splitlines())
    for p in passages.split(programmes, 300):
        if p.profile:
            continue
        for line in p.text.splitlines():
            assert any(line in c for c in corpus_lines), line


def test_short_programmes_stay_one_passage(programmes):
    ps = passages.split(programmes, 300)
    for programme in programmes:
        if not any(b.subitem for b in programme.blocks) and len(programme.text.replace("\n", "")) <= 300:
            assert sum(p.key == programme.key and not p.profile for p in ps) == 1, programme.key


def test_sentence_aligned_cuts(programmes):
    lines = (REPO / "corpus" / "chapter5.md").read_text(encoding="utf-8").splitlines()
    cuts_after_comma = 0
    for p in passages.split(programmes, 150):
        if p.profile:
            continue
        last = p.text.splitlines()[-1]
        at_line_end = any(line.endswith(last) for line in lines)
        assert last.endswith(("。", "！", "？", "、")) or at_line_end, last
        cuts_after_comma += last.endswith("、")
    assert cuts_after_comma >= 1  # some corpus sentences are longer than 150 characters


def test_breadcrumb_urls_and_subitems(programmes):
    ps = passages.split(programmes, 300)
    sub = [p for p in ps if p.key == "2.(2)" and p.subitem.startswith("③")]
    assert sub and sub[0].breadcrumb == (
        "2. 中小企業への支援 › (2) 企業の海外展開における費用面の支援 › ③ 中小企業等に対する知的財産侵害対策")
    assert sub[0].urls == ("https://www.jpo.go.jp/support/chusho/shien_kaignaingai.html",)
    first = ps[0]
    assert (first.key, first.urls) == ("1.(1)", ("https://ipbase.go.jp/ipas/",))
    assert first.embedded == first.breadcrumb + "\n" + first.text
    assert first.indexed.startswith(first.embedded)
    assert first.indexed.endswith("IPAS")  # the link title


def test_too_small_a_bound_is_refused(programmes):
    with pytest.raises(ValueError, match="at least 20"):
        passages.split(programmes, 5)


def test_profile_units_follow_their_programme_split_by_language(programmes):
    ps = passages.split(programmes, 150)
    assert [p.id for p in ps] == list(range(len(ps)))
    ipas = [p for p in ps if p.key == "1.(1)"]
    text_units, profile_units = [p for p in ipas if not p.profile], [p for p in ipas if p.profile]
    assert ipas == text_units + profile_units  # the programme's passages first, then its profile
    japanese, english = profile_units
    programme = programmes[0]
    assert japanese.text.split("、") == [t for t in programme.terms if not t.isascii()]
    assert english.text.split(", ") == [t for t in programme.terms if t.isascii()]
    assert english.text.isascii() and not japanese.text.isascii()
    assert japanese.urls == tuple(programme.urls) and not japanese.link_titles
    # what the desk shows is the programme's text, which the profile never joins
    assert japanese.text not in programme.text and "terms:" not in programme.text
