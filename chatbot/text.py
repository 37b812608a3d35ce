"""Japanese text handling: one normaliser for indexing and querying, MeCab tokens, sentences.

MeCab is fugashi with the unidic-lite dictionary. Features are read by name
(`word.feature.lemma`, `.pos1`), never by splitting the feature string.
"""

from __future__ import annotations

import re
import threading
import unicodedata
from typing import NamedTuple

# Bumped whenever normalise() or tokens() change: an index built with another version is stale.
VERSION = "2"

# Parts of speech that carry no topic: particles, auxiliaries, punctuation, blanks, pronouns
# (どこ, それ); and light verbs/nouns (ある, する, こと) whose pos2 is 非自立可能.
_SKIP_POS1 = {"助詞", "助動詞", "補助記号", "記号", "空白", "代名詞"}
_SKIP_POS2 = {"非自立可能"}
# Parts that join into a compound with their neighbours (中小+企業, 知財+総合+支援+窓口).
_COMPOUND_POS1 = {"名詞", "接頭辞", "接尾辞"}
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_WAVES = str.maketrans({"〜": "~", "～": "~", "〰": "~"})
# A dash typed for the long vowel mark inside a katakana word (ネットワ-ク, ｻｰﾋﾞｽ aside).
_KATAKANA_DASH = re.compile(r"(?<=[ァ-ヺ])[-‐‑–—―−﹣－](?=[ァ-ヺ]|$|\s)")
# English function words: they carry no topic, yet the corpus's English link titles and
# profile terms contain them, so "What is the weather?" would share "the" with a programme.
_ENGLISH_STOP = frozenset("""a an the is are was were be been am do does did have has had i you we
they he she it its my your our their me us them this that these those what which who whom how
when where why can could will would should may might must shall of to in on at for with by from
about as into and or but if so not no any some there here please""".split())
# English words that point back at what was said, like その・それ: "How much does it cost?"
# Not "that" or "there": mostly relative ("a fund that…") and existential ("is there…").
_ENGLISH_BACK = frozenset("it its this these those they them".split())
_TOPIC_CHANGE = ("ところで", "それとは別", "それとは違", "別件", "別の話", "話は変わ", "話が変わ", "話変わ",
                 "by the way", "btw", "separately", "another question", "on another note", "different question",
                 "unrelated", "changing the subject", "also,")
_LINK_WORDS = frozenset("url urls link links website site page homepage web リンク サイト ホームページ ページ ウェブ".split())
_SENTENCE_END = re.compile(r"(?<=[。！？!?])")
_LATIN_RUN = re.compile(r"[a-z0-9]+(?:[-・.&']?[a-z0-9]+)*")
_LATIN_SEP = re.compile(r"[-・.&']")


def scrub(text: str) -> str:
    """Lone surrogates (from broken input) become U+FFFD: they cannot be encoded as UTF-8."""
    return _SURROGATE.sub("\ufffd", text)


def normalise(text: str) -> str:
    """The shared normaliser: NFKC, no control characters, single spaces.

    Kept deliberately small so that what the desk shows (corpus text) and what it matches
    (normalised text) stay recognisably the same.
    """
    text = scrub(text)
    text = _CONTROL.sub(" ", text)  # invisible and control characters break tokens and layout
    text = unicodedata.normalize("NFKC", text)  # ＩＰＡＳ→IPAS, ｽﾀｰﾄｱｯﾌﾟ→スタートアップ, ①→1
    text = text.translate(_WAVES)  # 〜 and ～ are typed interchangeably
    text = _KATAKANA_DASH.sub("ー", text)
    return re.sub(r"\s+", " ", text).strip()


class Morpheme(NamedTuple):
    surface: str
    lemma: str  # "" when UniDic has none (unknown words: IPAS, FOPISER)
    pos1: str
    pos2: str
    kana: str  # the reading, "" or "*" when UniDic has none
    spaced: bool  # preceded by white space


_tagger = None
_mecab = threading.Lock()


def mecab(text: str) -> list[Morpheme]:
    """MeCab's analysis of `text`, as plain values. One tagger for the process, taken by one
    thread at a time: fugashi's nodes point into the tagger's lattice, which the next parse
    overwrites, so parsing and reading the nodes happen under one lock. A parse takes about 0.1 ms
    of a 20 ms search, so the searches running in parallel hardly wait here, and a tagger per
    thread would cost about 90 MB of resident memory each (its own mapping of the dictionary)."""
    global _tagger
    with _mecab:
        if _tagger is None:
            import fugashi  # a C extension: cheap, but only the lexical path needs it

            _tagger = fugashi.Tagger()
        return [Morpheme(w.surface, w.feature.lemma or "", w.feature.pos1 or "", w.feature.pos2 or "",
                         w.feature.kana or "", bool(w.white_space)) for w in _tagger(text)]


def dictionary() -> str:
    """The MeCab dictionary in use, for the index manifest."""
    import unidic_lite

    return f"unidic-lite {unidic_lite.VERSION}"


class Word(NamedTuple):
    surface: str
    lemma: str
    pos1: str
    pos2: str
    spaced: bool  # preceded by white space: compounds never cross it


def words(text: str) -> list[Word]:
    """MeCab's words of the normalised text, with lemma and part of speech."""
    out = []
    for m in mecab(normalise(text)):
        lemma = m.lemma or m.surface  # unknown words (IPAS, FOPISER) have no lemma
        lemma = lemma.split("-", 1)[0] if lemma != "-" else lemma  # スタートアップ-start-up → スタートアップ
        out.append(Word(m.surface, lemma, m.pos1, m.pos2, m.spaced))
    return out


def tokens(text: str) -> list[str]:
    """Terms for BM25: content-word lemmas, noun compounds, and Latin names without punctuation.

    UniDic splits 中小企業 into 中+小+企業 and J-PlatPat into J, -, PlatPat; the compound and the
    joined Latin run are added so that a query naming the whole thing scores higher than one
    that shares a part.
    """
    analysed = words(text)
    terms: list[str] = []
    run: list[str] = []
    for word in analysed + [Word("", "", "", "", True)]:
        if word.spaced or word.pos1 not in _COMPOUND_POS1:
            if len(run) > 1:
                terms.append("".join(run).lower())
            run = []
        if word.pos1 in _COMPOUND_POS1:
            run.append(word.surface)
        if (word.pos1 and word.pos1 not in _SKIP_POS1 and word.pos2 not in _SKIP_POS2
                and word.lemma.lower() not in _ENGLISH_STOP):
            terms.append(word.lemma.lower())
    for m in _LATIN_RUN.finditer(normalise(text).lower()):
        joined = _LATIN_SEP.sub("", m.group(0))
        if joined != m.group(0) and joined not in terms:
            terms.append(joined)
    return terms


def refers_back(text: str) -> bool:
    """Does the question point back at what was said (その制度, それ, そこ, この)?

    Read from MeCab's parts of speech: demonstrative adnominals (連体詞 この・その・あの) and
    pronouns (代名詞 それ・そこ・これ); question words (どこ, 何) are pronouns too but ask, not point.
    In English, the pronouns and demonstratives of _ENGLISH_BACK.
    """
    if _ENGLISH_BACK.intersection(re.findall(r"[a-z]+", normalise(text).lower())):
        return True
    for word in words(text):
        if word.pos1 == "連体詞" and word.surface[:1] in "こそあ":
            return True
        if word.pos1 == "代名詞" and word.surface[:1] in "こそあ":
            return True
    return False


def changes_topic(text: str) -> bool:
    """Does the question announce a new topic (ところで, それとは別に, by the way)? Such a
    marker outweighs a pointing word in the same sentence (それとは別に, "OK, got it. Separately")."""
    lowered = normalise(text).lower()
    return any(marker in lowered for marker in _TOPIC_CHANGE)


def asks_for_link(text: str) -> bool:
    """Does the question ask where to read more (the link, the web page)? Every answer carries
    its programme's URLs, so in a conversation such a question is about the programme shown."""
    return not _LINK_WORDS.isdisjoint(re.findall(r"[a-z]+|[ァ-ヺー]+", normalise(text).lower()))


def sentences(text: str) -> list[str]:
    """Split body text into sentences at 。！？ and at line ends (list items are sentences)."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        out.extend(s for s in _SENTENCE_END.split(line) if s.strip())
    return out
