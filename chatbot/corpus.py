"""The corpus: markdown chapters (corpus/*.md) parsed into programme records.

The format is documented at the top of corpus/chapter5.md. The parser is strict: anything it
does not understand is an error with file and line, never skipped, because a skipped line is
an answer the desk silently cannot give.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from chatbot.errors import CorpusError

AUDIENCES = ("スタートアップ", "中小企業", "大学・研究機関", "個人", "自治体・支援機関", "海外から")
# Metadata lines under a programme heading. audience: who it is for (the desk's 「あなたは？」).
# terms: and asks: are its profile, used to match questions and never shown: terms are the
# service's own vocabulary (forms, systems, fees, errors; Japanese or English), asks are typical
# questions, one per line, that join the question bank (chatbot/bank.py).
METADATA = ("audience", "terms", "asks")
MAX_TERM_CHARS = 60
MAX_ASK_CHARS = 200

_CHAPTER = re.compile(r"^# (第(\d+)章)\s*(.*)$")
_SECTION = re.compile(r"^## (\d+)\.\s+(\S.*)$")
_PROGRAMME = re.compile(r"^### \((\d+)\)\s*(\S.*)$")
_SUBITEM = re.compile(r"^#### ([①-⑳])\s*(\S.*)$")
_LINK = re.compile(r"^\[([^\]]+)\]\((\S+)\)$")
_META = re.compile(r"^([a-z_]+):\s*(.*)$")
_KEY_PREFIX = re.compile(r"^key_prefix:\s*(\S+)$")
_URL = re.compile(r"^https?://[\x21-\x7e]+$")  # printable ASCII only: catches damaged URLs


@dataclass(frozen=True)
class Link:
    title: str
    url: str
    subitem: str = ""  # the sub-item title the link stands under, if any


@dataclass(frozen=True)
class Block:
    """A run of body text under one programme, or under one of its sub-items."""

    subitem: str  # "" for the programme's own text; else e.g. "① 海外権利化支援事業"
    text: str  # markdown lines as written ("- " list items kept)


@dataclass
class Programme:
    key: str  # "2.(2)"; with a chapter key_prefix, e.g. "6-2.(2)"
    chapter: str  # "第5章"
    section_no: int
    section: str  # "中小企業への支援"
    number: int
    title: str
    source: str  # "corpus/chapter5.md:97", where the heading is
    blocks: list[Block] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)
    audience: list[str] = field(default_factory=list)
    terms: list[str] = field(default_factory=list)  # matching only (profile)
    asks: list[str] = field(default_factory=list)  # matching only: typical questions

    @property
    def urls(self) -> list[str]:
        return list(dict.fromkeys(link.url for link in self.links))

    @property
    def section_title(self) -> str:
        return f"{self.section_no}. {self.section}"

    @property
    def subitems(self) -> list[str]:
        return [b.subitem for b in self.blocks if b.subitem]

    @property
    def text(self) -> str:
        """All body text, sub-item headings included, as a person reads it."""
        parts = []
        for block in self.blocks:
            parts.append(f"{block.subitem}\n{block.text}" if block.subitem else block.text)
        return "\n\n".join(p for p in parts if p.strip())

    def summary(self) -> dict:
        return {"key": self.key, "section": self.section_title, "title": self.title, "urls": self.urls}


def load(corpus_dir: Path) -> list[Programme]:
    """Parse every corpus/*.md (sorted by name) into programmes, in corpus order."""
    files = sorted(Path(corpus_dir).glob("*.md"))
    if not files:
        raise CorpusError(corpus_dir, 0, "no *.md files in the corpus directory")
    programmes: list[Programme] = []
    seen: dict[str, str] = {}
    for path in files:
        for programme in parse_file(path):
            if programme.key in seen:
                raise CorpusError(
                    path, int(programme.source.rsplit(":", 1)[1]),
                    f"programme key {programme.key} already defined at {seen[programme.key]}; "
                    "give this chapter a 'key_prefix: …' line under its '# 第N章' heading",
                )
            seen[programme.key] = programme.source
            programmes.append(programme)
    return programmes


def digest(corpus_dir: Path) -> str:
    """SHA-256 over the corpus files (names and bytes): the index is stale when it changes."""
    h = hashlib.sha256()
    for path in sorted(Path(corpus_dir).glob("*.md")):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def parse_file(path: Path) -> list[Programme]:
    return _Parser(path).parse(path.read_text(encoding="utf-8"))


class _Parser:
    """A line-by-line state machine: chapter → section → programme → sub-item."""

    def __init__(self, path: Path):
        self.path = path
        self.chapter = ""
        self.prefix = ""
        self.section: tuple[int, str] | None = None
        self.programme: Programme | None = None
        self.subitem = ""
        self.lines: list[str] = []  # body lines of the current block
        self.in_metadata = False
        self.programmes: list[Programme] = []

    def fail(self, lineno: int, message: str):
        raise CorpusError(self.path, lineno, message)

    def parse(self, text: str) -> list[Programme]:
        in_comment = False
        for lineno, raw in enumerate(text.splitlines(), start=1):
            line = raw.rstrip()
            if in_comment:
                in_comment = "-->" not in line
                continue
            if line.lstrip().startswith("<!--"):
                in_comment = "-->" not in line
                continue
            self.line(lineno, line)
        if in_comment:
            self.fail(lineno, "an HTML comment '<!--' is never closed with '-->'")
        self.close_block()
        if not self.chapter:
            self.fail(1, "the file has no chapter heading '# 第N章 …'")
        return self.programmes

    def line(self, lineno: int, line: str):
        if m := _CHAPTER.match(line):
            if self.chapter:
                self.fail(lineno, "a second chapter heading; put each chapter in its own file")
            self.chapter = m.group(1)
            return
        if not self.chapter:
            if line.strip():
                self.fail(lineno, "text before the chapter heading '# 第N章 …'")
            return
        if m := _KEY_PREFIX.match(line):
            if self.section is not None:
                self.fail(lineno, "key_prefix must come right under the chapter heading")
            self.prefix = m.group(1)
            return
        if line.startswith("#"):
            self.heading(lineno, line)
            return
        if self.programme is None:
            if line.strip():
                self.fail(lineno, "text outside a programme; start one with '### (n) title'")
            return
        if m := _META.match(line):
            if m.group(1) in METADATA and not self.in_metadata:
                # Shown to visitors as body text otherwise: a profile must never be an answer.
                self.fail(lineno, f"'{m.group(1)}:' must stand directly under the programme heading, "
                          "with the other metadata lines, before any text or sub-item")
            if self.in_metadata:
                self.metadata(lineno, m.group(1), m.group(2))
                return
        self.in_metadata = False
        if m := _LINK.match(line.strip()):
            title, url = m.group(1).strip(), m.group(2)
            if not _URL.match(url):
                self.fail(lineno, f"not a plain ASCII http(s) URL: {url!r}")
            self.programme.links.append(Link(title, url, self.subitem))
            return
        if re.search(r"\]\(|https?://", line):
            self.fail(lineno, "a link must stand alone on its line as [title](https://…)")
        self.lines.append(line)

    def heading(self, lineno: int, line: str):
        self.close_block()
        if m := _SECTION.match(line):
            number = int(m.group(1))
            expected = self.section[0] + 1 if self.section else 1
            if number != expected:
                self.fail(lineno, f"section {number} found where section {expected} was expected")
            self.section, self.programme = (number, m.group(2).strip()), None
        elif m := _PROGRAMME.match(line):
            if self.section is None:
                self.fail(lineno, "a programme heading before any section heading '## n. title'")
            number = int(m.group(1))
            expected = self.programme.number + 1 if self.programme else 1
            if number != expected:
                self.fail(lineno, f"programme ({number}) found where ({expected}) was expected")
            section_no, section = self.section
            self.programme = Programme(
                key=f"{self.prefix}{section_no}.({number})", chapter=self.chapter,
                section_no=section_no, section=section, number=number,
                title=m.group(2).strip(), source=f"{self.path.name}:{lineno}",
            )
            self.programmes.append(self.programme)
            self.in_metadata = True
        elif m := _SUBITEM.match(line):
            if self.programme is None:
                self.fail(lineno, "a sub-item heading '#### ①' outside a programme")
            self.subitem = f"{m.group(1)} {m.group(2).strip()}"
            if self.subitem in self.programme.subitems:
                self.fail(lineno, f"sub-item {self.subitem!r} appears twice in {self.programme.key}")
        else:
            self.fail(lineno, "unrecognised heading; use '## n. section', '### (n) programme' "
                      "or '#### ① sub-item'")

    def metadata(self, lineno: int, name: str, value: str):
        if name not in METADATA:
            self.fail(lineno, f"unknown metadata {name!r}; choose from {list(METADATA)}")
        value = value.strip()
        if not value:
            self.fail(lineno, f"'{name}:' has no value")
        programme = self.programme
        if name == "asks":
            if len(value) > MAX_ASK_CHARS:
                self.fail(lineno, f"a question in 'asks:' is {len(value)} characters; at most {MAX_ASK_CHARS}")
            if value in programme.asks:
                self.fail(lineno, f"the question {value!r} is already in the asks of {programme.key}")
            programme.asks.append(value)
            return
        values = [v.strip() for v in re.split(r"[,、，]", value)]
        if "" in values:
            self.fail(lineno, f"an empty item in '{name}:' (two commas in a row, or one at the end)")
        if name == "audience":
            unknown = [v for v in values if v not in AUDIENCES]
            if unknown:
                self.fail(lineno, f"unknown audience {unknown}; choose from {list(AUDIENCES)}")
            programme.audience = values
            return
        for term in values:  # terms
            if len(term) > MAX_TERM_CHARS:
                self.fail(lineno, f"the term {term[:20]!r}… is {len(term)} characters; a term is a word or "
                          f"a short phrase (at most {MAX_TERM_CHARS}); put questions in 'asks:'")
            if term in programme.terms:
                self.fail(lineno, f"the term {term!r} is already in the terms of {programme.key}")
            programme.terms.append(term)

    def close_block(self):
        """End the current body block (at a heading or the end of the file)."""
        if self.programme is not None:
            text = "\n".join(self.lines).strip("\n")
            if text.strip() or self.subitem:
                self.programme.blocks.append(Block(self.subitem, text))
        self.lines, self.subitem, self.in_metadata = [], "", False
