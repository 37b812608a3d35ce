"""Corpus terms by reading, for the typos a Japanese keyboard makes.

Most misspellings typed through an input method keep the sound and lose the writing: a wrong
conversion (産学連係 for 産学連携, 斡旋 for あっせん), a dropped voicing mark (デサイナー for
デザイナー), a long vowel typed or left out (ネットワク). A question's term that the corpus does
not know is looked up by a reading key (MeCab's kana, voicing marks, small kana and ー folded
away) among the corpus's own terms, and replaced by the ones that sound the same.

Keys shorter than MIN_KEY are never matched: short readings are shared by unrelated words
(キカン is 期間, 機関 and 帰還); nor is a compound whose every word the corpus knows.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache

from chatbot import text

MIN_KEY = 4  # kana in a reading key before it may stand for a term
MAX_SAME = 2  # a key that stands for more terms than this says too little to correct with

_SMALL = str.maketrans("ァィゥェォッャュョヮヵヶ", "アイウエオツヤユヨワカケ")
_HIRAGANA = {chr(c): chr(c + 0x60) for c in range(0x3041, 0x3097)}


def key(term: str) -> str:
    """The folded reading of a term, or "" when some part of it has no kana reading."""
    kana = []
    for word in text.mecab(term):
        reading = word.kana
        if not reading or reading == "*":
            reading = "".join(_HIRAGANA.get(c, c) for c in word.surface)
            if not all("ァ" <= c <= "ヺ" or c == "ー" for c in reading):
                return ""  # Latin, digits or an unknown kanji word: no reading to compare
        kana.append(reading)
    folded = unicodedata.normalize("NFD", "".join(kana))
    folded = "".join(c for c in folded if c not in "\u3099\u309a").translate(_SMALL).replace("ー", "")
    return unicodedata.normalize("NFC", folded)


class Readings:
    """The corpus vocabulary by reading key (built on first use: ~30 ms for 2,600 terms)."""

    def __init__(self, vocabulary):
        self.vocabulary = vocabulary
        self._by_key: dict[str, list[str]] | None = None

    def correct(self, terms: list[str]) -> list[str]:
        """The terms with each unknown one replaced by the corpus terms that sound the same
        (kept as it was when none does)."""
        out: list[str] = []
        for term in terms:
            out.extend(([] if term in self.vocabulary else self._same(term)) or [term])
        return out

    def _same(self, term: str) -> list[str]:
        parts = text.words(term)
        if len(parts) > 1 and all(w.lemma.lower() in self.vocabulary for w in parts):
            return []  # a new compound of known words (支援期間) is not a typo of 支援機関
        k = _key(term)
        if len(k) < MIN_KEY:
            return []
        same = self._table().get(k, [])
        return same if len(same) <= MAX_SAME else []

    def _table(self) -> dict[str, list[str]]:
        if self._by_key is None:
            table: dict[str, list[str]] = {}
            for term in self.vocabulary:
                k = _key(term)
                if len(k) >= MIN_KEY:
                    table.setdefault(k, []).append(term)
            self._by_key = table
        return self._by_key


@lru_cache(maxsize=4096)
def _key(term: str) -> str:
    return key(term)
