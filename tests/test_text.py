"""The shared normaliser and the MeCab tokens, with exact expectations on real sentences."""

import pytest

from chatbot.text import normalise, sentences, tokens, words


@pytest.mark.parametrize("text, expected", [
    ("中小企業がIPASを使いたい。", ["中", "小", "企業", "中小企業", "ipas", "使う"]),
    ("知財総合支援窓口はどこにありますか", ["知財", "総合", "支援", "窓口", "知財総合支援窓口"]),
    ("J-PlatPatの利用回数", ["j", "platpat", "利用", "回数", "利用回数", "jplatpat"]),
    ("INPIT-KANSAIのサービス", ["inpit", "kansai", "サービス", "inpitkansai"]),
    ("English information for overseas applicants",
     ["english", "information", "for", "overseas", "applicants"]),
])
def test_tokens_exact(text, expected):
    assert tokens(text) == expected


@pytest.mark.parametrize("a, b", [
    ("ＩＰＡＳの支援期間", "IPASの支援期間"),
    ("ｽﾀｰﾄｱｯﾌﾟの料金", "スタートアップの料金"),
    ("２０２３年度に何件", "2023年度に何件"),
    ("Ｊ－ＰｌａｔＰａｔ", "J-PlatPat"),
    ("知財　総合支援窓口", "知財 総合支援窓口"),  # ideographic space
    ("ipas", "IPAS"),
])
def test_width_and_case_variants_tokenize_alike(a, b):
    assert tokens(a) == tokens(b)


def test_lemmas_and_loanwords_are_read_by_field():
    by_surface = {w.surface: w for w in words("スタートアップが特許を取りたい")}
    assert by_surface["スタートアップ"].lemma == "スタートアップ"  # UniDic's "-start-up" is dropped
    assert by_surface["取り"].lemma == "取る"
    assert by_surface["特許"].pos1 == "名詞"


def test_light_words_and_punctuation_are_not_terms():
    assert tokens("それはどこにあるのですか？") == []


def test_normalise_removes_controls_and_unifies_waves():
    assert normalise(" a\x00b\u200bc\t\nd\ufeff ") == "a b c d"
    assert normalise("〜") == normalise("～") == "~"
    assert normalise("①") == "1"


def test_sentences_split_at_stops_and_lines():
    assert sentences("あ。い！う？\n- え。\n\nお") == ["あ。", "い！", "う？", "- え。", "お"]
