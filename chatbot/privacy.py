"""What the log keeps of a visitor's question: the question, with personal data masked first.

Visitors type their details into a chat box ("連絡先は 090-1234-5678 です"); the log is read by
staff and kept for the retention period, so before a question is written anywhere (spool,
database) these are replaced by a label: e-mail addresses, phone numbers (Japanese, with or
without +81, hyphens or spaces), postcodes (〒123-4567 / 123-4567) and 12-digit individual
numbers (マイナンバー). Full-width digits count as digits. The search itself sees the question
as typed: only what is stored is masked.
"""

from __future__ import annotations

import re

_D = "[0-9０-９]"
_SEP = "[-‐‑–−ー－.．()（） 　]?"  # hyphens, dots, brackets (03(1234)5678) and spaces
_UNIT = "(?![0-9０-９]|[円万億件年月日人個社%％])"  # 500-1000円, 2021 2022 2023年: amounts, not numbers of a person
_PATTERNS = [
    (re.compile(r"[\w.+-]+[@＠][\w-]+(?:[.．][\w-]+)+"), "〔メール〕"),
    (re.compile(rf"(?:\+|＋)(?:81|８１){_SEP}(?:\(0\){_SEP})?(?:{_D}{_SEP}){{7,9}}{_D}(?![0-9０-９])"), "〔電話〕"),
    (re.compile(rf"(?<![0-9０-９])(?:{_D}{{4}}{_SEP}){{2}}{_D}{{4}}{_UNIT}"), "〔個人番号〕"),
    (re.compile(rf"(?<![0-9０-９])[(（]?[0０](?:{_SEP}{_D}){{8,10}}(?![0-9０-９])"), "〔電話〕"),
    (re.compile(rf"〒{_SEP}{_D}{{3}}[-‐−ー－]?{_D}{{4}}(?![0-9０-９])"), "〔郵便番号〕"),
    (re.compile(rf"(?<![0-9０-９]){_D}{{3}}[-‐−ー－]{_D}{{4}}{_UNIT}"), "〔郵便番号〕"),
]
LABELS = [label for _, label in _PATTERNS]


def mask(text: str) -> str:
    for pattern, label in _PATTERNS:
        text = pattern.sub(label, text)
    return text
