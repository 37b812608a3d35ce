"""Aliases learned from the corpus: Latin names (IPAS, J-PlatPat, FOPISER, GrIP …) and their
katakana readings, so that アイパス, ジェイプラットパット or ｆｏｐｉｓｅｒ find the programme.

Names are taken from the corpus itself: Latin text in brackets （…）「…」“…” and link titles
that are a short Latin name. Nothing here lists particular questions. A katakana word in a
question is matched two ways: letter by letter for acronyms (ピーシーティー → PCT), and by a
rough phonetic key for words read as words (アイパス → IPAS): both sides are romanised and
the vowels katakana adds after consonants (ス → s, ト → t) are dropped before comparing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_BRACKETED = re.compile(r"[(（「“\"]\s*([A-Za-z][A-Za-z0-9\-&. ]{1,30}?)\s*[)）」”\"]")
_LATIN_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9\-&. ]{1,30}$")
_KATAKANA = re.compile(r"[ァ-ヴー]{2,}")
_LATIN_WORD = re.compile(r"[a-z][a-z0-9\-]{2,}")

_LETTERS = dict(zip("abcdefghijklmnopqrstuvwxyz", [
    "エー", "ビー", "シー", "ディー", "イー", "エフ", "ジー", "エイチ", "アイ", "ジェイ", "ケー", "エル", "エム",
    "エヌ", "オー", "ピー", "キュー", "アール", "エス", "ティー", "ユー", "ブイ", "ダブリュー", "エックス", "ワイ", "ゼット"]))

# Katakana → romaji (Hepburn-like), longest match first; written for matching, not display.
_KANA = {}
for row, cons in [("アイウエオ", ""), ("カキクケコ", "k"), ("ガギグゲゴ", "g"), ("サシスセソ", "s"),
                  ("ザジズゼゾ", "z"), ("タチツテト", "t"), ("ダヂヅデド", "d"), ("ナニヌネノ", "n"),
                  ("ハヒフヘホ", "h"), ("バビブベボ", "b"), ("パピプペポ", "p"), ("マミムメモ", "m"),
                  ("ラリルレロ", "r"), ("ヴ", "b")]:
    for kana, vowel in zip(row, "aiueo" if len(row) == 5 else "u"):
        _KANA[kana] = cons + vowel
_KANA.update({"シ": "shi", "チ": "chi", "ツ": "tsu", "フ": "fu", "ジ": "ji", "ヂ": "ji", "ヤ": "ya", "ユ": "yu",
              "ヨ": "yo", "ワ": "wa", "ヲ": "o", "ン": "n", "ッ": "", "ー": "",
              "ァ": "a", "ィ": "i", "ゥ": "u", "ェ": "e", "ォ": "o", "ャ": "ya", "ュ": "yu", "ョ": "yo"})
for base, cons in [("キ", "ky"), ("ギ", "gy"), ("シ", "sh"), ("ジ", "j"), ("チ", "ch"), ("ニ", "ny"),
                   ("ヒ", "hy"), ("ビ", "by"), ("ピ", "py"), ("ミ", "my"), ("リ", "ry")]:
    for small, vowel in zip("ャュョ", "auo"):
        _KANA[base + small] = cons + vowel
for base, cons in [("フ", "f"), ("ヴ", "b"), ("テ", "t"), ("デ", "d"), ("ウ", "w"), ("シ", "sh"),
                   ("ジ", "j"), ("チ", "ch")]:
    for small, vowel in zip("ァィェォ", "aieo"):
        _KANA[base + small] = cons + vowel


@dataclass(frozen=True)
class Alias:
    name: str  # as written in the corpus, e.g. "J-PlatPat"
    key: str  # the programme it names
    joined: str  # lower case, letters and digits only: "jplatpat"
    spelled: str  # letter-by-letter katakana of an acronym, or ""
    phonetic: str  # the rough key compared with katakana words


def learn(passages) -> list[Alias]:
    """Latin names of each programme, from its bracketed text and link titles (first owner wins)."""
    seen: dict[str, Alias] = {}
    for p in passages:
        names = [m.group(1) for m in _BRACKETED.finditer(f"{p.title}\n{p.text}")]
        names += [t for t in p.link_titles if _LATIN_NAME.match(t)]
        for name in names:
            joined = re.sub(r"[^a-z0-9]", "", name.lower())
            if len(joined) < 2 or joined in seen:
                continue
            spelled = "".join(_LETTERS.get(c, "?") for c in joined) if len(joined) <= 4 else ""
            seen[joined] = Alias(name.strip(), p.key, joined, spelled, _latin_key(joined))
    return list(seen.values())


def expand(clean: str, aliases: list[Alias]) -> str:
    """The question with the Latin names its katakana or run-together words stand for appended."""
    found: list[str] = []
    for word in _KATAKANA.findall(clean):
        alias = match_katakana(word, aliases)
        if alias and alias.name not in found and alias.name not in clean:
            found.append(alias.name)
    lowered = clean.lower()
    for word in _LATIN_WORD.findall(lowered):
        joined = word.replace("-", "")
        for alias in aliases:
            if alias.joined == joined and alias.name.lower() != word and alias.name not in found:
                found.append(alias.name)  # "ipbase" → "IP BASE", "jplatpat" → "J-PlatPat"
    return f"{clean} {' '.join(found)}" if found else clean


def match_katakana(word: str, aliases: list[Alias]) -> Alias | None:
    """The alias a katakana word reads as, if one is close enough (the closest wins)."""
    plain = word.replace("ー", "")
    for alias in aliases:
        if alias.spelled and alias.spelled.replace("ー", "") == plain:
            return alias
    key = _kana_key(word)
    best, best_distance = None, None
    for alias in aliases:
        if len(alias.joined) < 4:  # too short to tell from ordinary words by sound
            continue
        distance = _levenshtein(key, alias.phonetic)
        if distance <= max(1, round(0.25 * max(len(key), len(alias.phonetic)))):
            if best_distance is None or distance < best_distance:
                best, best_distance = alias, distance
    return best


def romanise(word: str) -> str:
    out, i = [], 0
    while i < len(word):
        pair = word[i:i + 2]
        if pair in _KANA:
            out.append(_KANA[pair])
            i += 2
        else:
            out.append(_KANA.get(word[i], ""))
            i += 1
    return "".join(out)


def _kana_key(word: str) -> str:
    r = romanise(word).replace("shi", "si").replace("chi", "ti").replace("tsu", "tu").replace("fu", "hu")
    r = r.replace("hu", "fu")
    # Drop the vowel katakana adds after a consonant: ス→s, プ→p, ト→t, ド→d.
    r = re.sub(r"([bcdfghjkmnprstvz])u(?=[bcdfghjkmnprstvz]|$)", r"\1", r)
    r = re.sub(r"([td])o(?=[bcdfghjkmnprstvz]|$)", r"\1", r)
    return re.sub(r"(.)\1+", r"\1", r)


def _latin_key(joined: str) -> str:
    k = re.sub(r"[0-9]", "", joined)
    k = k.replace("ph", "f").replace("ck", "k").replace("c", "k").replace("q", "k").replace("x", "ks")
    k = k.replace("l", "r").replace("v", "b").replace("w", "u")
    k = re.sub(r"er$", "a", k)  # FOPISER → フォピサー
    return re.sub(r"(.)\1+", r"\1", k)


def _levenshtein(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]
