"""The shared normaliser and the MeCab tokens, with exact expectations on real sentences."""

import pytest

from chatbot.readings import Readings, key
from chatbot.text import asks_for_link, changes_topic, normalise, refers_back, sentences, tokens, words


@pytest.mark.parametrize("text, expected", [
    ("中小企業がIPASを使いたい。", ["中", "小", "企業", "中小企業", "ipas", "使う"]),
    ("知財総合支援窓口はどこにありますか", ["知財", "総合", "支援", "窓口", "知財総合支援窓口"]),
    ("J-PlatPatの利用回数", ["j", "platpat", "利用", "回数", "利用回数", "jplatpat"]),
    ("INPIT-KANSAIのサービス", ["inpit", "kansai", "サービス", "inpitkansai"]),
    ("English information for overseas applicants",
     ["english", "information", "overseas", "applicants"]),  # "for" says nothing of the topic
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


def test_a_dash_typed_for_the_long_vowel_becomes_one():
    assert normalise("ネットワ-ク") == normalise("ネットワ－ク") == "ネットワーク"
    assert normalise("A-1 グランプリ") == "A-1 グランプリ"  # Latin hyphens stay


@pytest.mark.parametrize("question, back, new_topic, link", [
    ("How much does it cost?", True, False, False),
    ("Where can I search design registrations?", False, False, False),
    ("Is there a fund that covers translation?", False, False, False),  # relative "that", existential "there"
    ("OK, got it. Separately, who helps with trade secrets?", True, True, False),
    ("それとは別に、営業秘密の相談はできますか", True, True, False),
    ("その制度のURLは？", True, False, True),
    ("Do you have the link?", False, False, True),
    ("ところで、商標の検索サイトはありますか", False, True, True),
])
def test_conversation_cues_in_japanese_and_english(question, back, new_topic, link):
    assert (refers_back(question), changes_topic(question), asks_for_link(question)) == (back, new_topic, link)


# -- typos that keep the sound (chatbot/readings.py), on the real MeCab readings --------------------

VOCABULARY = {"産学連携", "連携", "知財戦略デザイナー", "支援機関", "支援", "期間", "補助金", "機関", "帰還"}


@pytest.mark.parametrize("typed, corrected", [
    (["産学連係"], ["産学連携"]),  # wrong kanji from the input method
    (["連係", "支援"], ["連携", "支援"]),
    (["知財戦略デサイナー"], ["知財戦略デザイナー"]),  # a voicing mark left out
    (["ホジョ金"], ["補助金"]),  # katakana for the kanji, small ョ
    (["支援期間"], ["支援期間"]),  # a new compound of known words, not 支援機関
    (["きかん"], ["きかん"]),  # too short a reading: 機関 or 帰還?
    (["ipaz"], ["ipaz"]),  # no kana reading
])
def test_unknown_terms_are_replaced_by_corpus_terms_that_sound_the_same(typed, corrected):
    assert Readings(VOCABULARY).correct(typed) == corrected


def test_reading_keys_fold_voicing_small_kana_and_long_vowels():
    assert key("デザイナー") == key("デサイナ") == key("テサイナー")
    assert key("補助金") == key("ほじょきん") == "ホシヨキン"
    assert key("IPAS") == ""


# -- what the log keeps (chatbot/privacy.py) ---------------------------------------------------------

@pytest.mark.parametrize("typed, kept", [
    ("連絡先は090-1234-5678です", "連絡先は〔電話〕です"),
    ("０３－１２３４－５６７８まで", "〔電話〕まで"),  # full width
    ("+81(0)90-1234-5678", "〔電話〕"),
    ("+819012345678", "〔電話〕"),
    ("03(1234)5678 か 090.1234.5678", "〔電話〕 か 〔電話〕"),
    ("taro.yamada@example.co.jp まで", "〔メール〕 まで"),
    ("〒100-8915 東京都", "〔郵便番号〕 東京都"),
    ("〒1000013", "〔郵便番号〕"),
    ("マイナンバーは1234 5678 9012", "マイナンバーは〔個人番号〕"),
    # numbers that are not a person's: amounts, ranges, years, application and patent numbers
    ("500-1000円の手数料", "500-1000円の手数料"),
    ("2021 2022 2023年の件数", "2021 2022 2023年の件数"),
    ("特願2023-123456 と 特許第7123456号", "特願2023-123456 と 特許第7123456号"),
    ("IPASの1.(1)について", "IPASの1.(1)について"),
])
def test_personal_data_is_masked_and_other_numbers_are_not(typed, kept):
    from chatbot.privacy import mask

    assert mask(typed) == kept
