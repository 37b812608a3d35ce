"""The corpus against its source: every programme, every URL where it belongs, no sentence lost."""

import re
import unicodedata
from pathlib import Path

import pytest

from chatbot import corpus
from chatbot.errors import CorpusError

REPO = Path(__file__).resolve().parent.parent
SOURCE = Path(__file__).parent / "data" / "chapter5_source.txt"  # copy of shared/seed, as extracted
URL_LINE = re.compile(r"^<?(https?://\S+?)>?$")

# Links the PDF printed away from their programme, by (programme where printed, URL) → owner.
MOVED = {
    ("2.(4)", "https://www.jpo.go.jp/support/chusho/shien_gaikokusyutugan.html"): "2.(2)",
    ("2.(4)", "https://www.jpo.go.jp/support/chusho/shien_kaignaingai.html"): "2.(2)",
    ("2.(4)", "https://www.jpo.go.jp/support/chusho/shien_sosyou_hoken.html"): "2.(2)",
    ("2.(4)", "https://www.jpo.go.jp/support/chusho/kinyu-ka_tsuyo.html"): "2.(3)",
    ("3.(4)", "https://www.inpit.go.jp/katsuyo/ippd/index.html"): "3.(2)",
    ("3.(4)", "https://www.inpit.go.jp/katsuyo/startup/index.html"): "3.(3)",
    ("4.(2)", "https://www.jpo.go.jp/support/chusho/sien_jigyo.html"): "4.(1)",
    ("5.(3)", "https://www.jpo.go.jp/news/shinchaku/event/seminar/chizai_setumeikai.html"): "5.(2)",
    ("8.(7)", "https://faq.inpit.go.jp/gppd/service/"): "8.(6)",
    ("8.(7)", "https://www.inpit.go.jp/kinki/senmon_madoguchi/index.html"): "8.(6)",
}
REPAIRED = {"https://www.jpo.go.jp/support/chusho/sien_jigyو.html": "https://www.jpo.go.jp/support/chusho/sien_jigyo.html"}


def read_source():
    """The source as (programme key, kind, text) lines: kind is 'url', 'link-title' or 'body'."""
    lines = [line.strip() for line in SOURCE.read_text(encoding="utf-8").splitlines()]
    out, section, key = [], 0, None
    for i, line in enumerate(lines):
        if not line:
            continue
        if line.startswith("第5章"):
            out.append((None, "heading", line))
        elif m := re.match(r"^(\d+)\. \S", line):
            section, key = int(m.group(1)), None
            out.append((key, "heading", line))
        elif m := re.match(r"^\((\d+)\)", line):
            key = f"{section}.({m.group(1)})"
            out.append((key, "heading", line))
        elif m := URL_LINE.match(line):
            out.append((key, "url", m.group(1)))
            title = next(j for j in range(len(out) - 2, -1, -1) if out[j][1] == "body")
            out[title] = (out[title][0], "link-title", out[title][2])
        else:
            out.append((key, "body", line))
    return out


def comparable(text: str) -> str:
    """Text with layout removed: list markers, bullets and all white space."""
    lines = [re.sub(r"^(?:[-・●]\s*)+", "", line.strip()) for line in text.splitlines()]
    return re.sub(r"\s+", "", "".join(lines))


def sentences_of(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=。)", text) if len(s) > 1]


@pytest.fixture(scope="module")
def programmes():
    return corpus.load(REPO / "corpus")


def test_exactly_the_44_programmes_in_order(programmes):
    keys = [p.key for p in programmes]
    expected = [k for k, kind, _ in read_source() if kind == "heading" and k]
    assert keys == expected
    assert len(keys) == 44 and len(set(keys)) == 44
    assert [p.section_no for p in programmes].count(6) == 8  # section 6 has (1)…(8)


def test_programme_titles_match_the_source(programmes):
    titles = {k: re.sub(r"^\(\d+\)\s*", "", t) for k, kind, t in read_source() if kind == "heading" and k}
    for p in programmes:
        assert comparable(p.title) == comparable(titles[p.key]), p.key


def test_every_url_belongs_to_its_programme(programmes):
    expected: dict[str, set[str]] = {p.key: set() for p in programmes}
    for key, kind, url in read_source():
        if kind == "url":
            url = REPAIRED.get(url, url)
            expected[MOVED.get((key, url), key)].add(url)
    assert len(set().union(*expected.values())) == 56
    for p in programmes:
        assert set(p.urls) == expected[p.key], p.key
    assert all(u.isascii() for p in programmes for u in p.urls)


def test_sub_items_and_their_links(programmes):
    by_key = {p.key: p for p in programmes}
    assert by_key["1.(4)"].subitems == ["① スタートアップ対応面接活用早期審査", "② スタートアップ対応スーパー早期審査"]
    p = by_key["2.(2)"]
    assert [s[0] for s in p.subitems] == ["①", "②", "③", "④"]  # the duplicated ① is a link title
    assert {link.subitem[0] for link in p.links} == {"①", "②", "③", "④"}


def source_bodies() -> dict[str, str]:
    bodies: dict[str, list[str]] = {}
    for key, kind, text in read_source():
        if kind == "body" and key:
            bodies.setdefault(key, []).append(text)
    return {key: comparable("\n".join(lines)) for key, lines in bodies.items()}


def test_no_sentence_of_the_source_body_is_lost(programmes):
    source = source_bodies()
    assert len(source) == 44
    for p in programmes:
        ours = comparable(p.text)
        assert [s for s in sentences_of(source[p.key]) if s not in ours] == [], p.key
        assert source[p.key][-8:] in ours, p.key  # text after the last 。 too
    # The page breaks are joined, not just both halves present.
    ours = comparable("\n".join(p.text for p in programmes))
    for joined in ["戦略の策定、研究開発", "知的財産リスクへの対応", "をはじめとした知的財産に関する高度"]:
        assert joined in ours


def test_nothing_in_the_corpus_is_invented(programmes):
    source = source_bodies()
    for p in programmes:
        ours = comparable(p.text)
        assert [s for s in sentences_of(ours) if s not in source[p.key]] == [], p.key


def test_audience_is_recorded_for_every_programme(programmes):
    for p in programmes:
        assert p.audience and set(p.audience) <= set(corpus.AUDIENCES), p.key
    assert "海外から" in {a for p in programmes if p.section_no == 9 for a in p.audience}


def test_digest_changes_with_the_corpus(tmp_path):
    (tmp_path / "a.md").write_text(MINIMAL, encoding="utf-8")
    before = corpus.digest(tmp_path)
    (tmp_path / "a.md").write_text(MINIMAL + "\n追記。\n", encoding="utf-8")
    assert corpus.digest(tmp_path) != before


MINIMAL = """# 第5章 テスト

## 1. 節

### (1) 制度
audience: 個人

本文。

[題](https://example.jp/a)
"""


def test_minimal_file_parses(tmp_path):
    (tmp_path / "a.md").write_text(MINIMAL, encoding="utf-8")
    [p] = corpus.load(tmp_path)
    assert (p.key, p.title, p.section_title, p.urls, p.audience, p.text) == (
        "1.(1)", "制度", "1. 節", ["https://example.jp/a"], ["個人"], "本文。")


PROFILED = MINIMAL.replace("audience: 個人\n", "audience: 個人\nterms: 電子証明書、識別番号, 予納\n"
                           "terms: electronic certificate, applicant ID\nasks: 証明書の更新は？\n"
                           "asks: How do I renew my certificate?\n")


def test_profile_lines_are_read_and_kept_out_of_the_text(tmp_path):
    (tmp_path / "a.md").write_text(PROFILED, encoding="utf-8")
    [p] = corpus.load(tmp_path)
    assert p.terms == ["電子証明書", "識別番号", "予納", "electronic certificate", "applicant ID"]
    assert p.asks == ["証明書の更新は？", "How do I renew my certificate?"]
    assert (p.audience, p.text) == (["個人"], "本文。")


def test_every_programme_has_a_profile_in_both_languages(programmes):
    for p in programmes:
        assert len([t for t in p.terms if not t.isascii()]) >= 10, p.key
        assert any(t.isascii() for t in p.terms), p.key
        assert len(p.asks) >= 4 and any(q.isascii() for q in p.asks), p.key
        assert not any(t in p.text for t in p.asks), p.key


def test_another_chapter_drops_in_with_a_key_prefix(tmp_path):
    (tmp_path / "chapter5.md").write_text(MINIMAL, encoding="utf-8")
    other = MINIMAL.replace("# 第5章 テスト", "# 第6章 別\nkey_prefix: 6-")
    (tmp_path / "chapter6.md").write_text(other, encoding="utf-8")
    assert [p.key for p in corpus.load(tmp_path)] == ["1.(1)", "6-1.(1)"]


@pytest.mark.parametrize("text, line, message", [
    ("本文\n" + MINIMAL, 1, "before the chapter heading"),
    (MINIMAL.replace("## 1. 節", "## 2. 節"), 3, "section 2 found where section 1"),
    (MINIMAL.replace("### (1) 制度", "### (2) 制度"), 5, "programme (2) found where (1)"),
    (MINIMAL.replace("## 1. 節\n", ""), 4, "before any section heading"),
    (MINIMAL.replace("### (1)", "### 1)"), 5, "unrecognised heading"),
    (MINIMAL.replace("example.jp/a", "example.jp/é"), 10, "not a plain ASCII"),
    (MINIMAL.replace("audience: 個人", "audiance: 個人"), 6, "unknown metadata"),
    (MINIMAL.replace("audience: 個人", "audience: 学生"), 6, "unknown audience"),
    (MINIMAL.replace("本文。", "本文は[こちら](https://example.jp/b)。"), 8, "must stand alone"),
    (MINIMAL + "\n#### ① 小\n\nあ。\n\n#### ① 小\n", 16, "appears twice"),
    (MINIMAL + "\n<!-- 閉じない\n", 12, "never closed"),
    ("", 1, "no chapter heading"),
    (PROFILED.replace("本文。", "本文。\nterms: 後から"), 13, "must stand directly under the programme heading"),
    (MINIMAL + "\n#### ① 小\nasks: 小項目の質問\n", 13, "must stand directly under"),
    (PROFILED.replace("terms: 電子証明書", "terms: 識別番号、電子証明書"), 7, "already in the terms of 1.(1)"),
    (PROFILED.replace("terms: 電子証明書、", "terms: 電子証明書、、"), 7, "an empty item"),
    (PROFILED.replace("terms: electronic certificate, applicant ID", "terms:"), 8, "has no value"),
    (PROFILED.replace("terms: 電子証明書", "terms: " + "長" * 61), 7, "a term is a word or a short phrase"),
    (PROFILED.replace("asks: 証明書の更新は？", "asks: " + "あ" * 201), 9, "at most 200"),
    (PROFILED.replace("asks: How do I renew my certificate?", "asks: 証明書の更新は？"), 10, "already in the asks"),
    (MINIMAL.replace("## 1. 節\n", "## 1. 節\n\n浮いた本文\n"), 5, "text outside a programme"),
])
def test_malformed_files_name_file_and_line(tmp_path, text, line, message):
    (tmp_path / "bad.md").write_text(text, encoding="utf-8")
    with pytest.raises(CorpusError) as e:
        corpus.load(tmp_path)
    assert str(e.value).startswith(f"{tmp_path / 'bad.md'}:{line}: ")
    assert message in str(e.value)


def test_duplicate_keys_across_files_are_refused(tmp_path):
    (tmp_path / "a.md").write_text(MINIMAL, encoding="utf-8")
    (tmp_path / "b.md").write_text(MINIMAL, encoding="utf-8")
    with pytest.raises(CorpusError, match=r"b\.md:5: .*already defined at a\.md:5.*key_prefix"):
        corpus.load(tmp_path)


def test_empty_corpus_directory_is_an_error(tmp_path):
    with pytest.raises(CorpusError, match="no \\*.md files"):
        corpus.load(tmp_path)
