"""Passages: programmes cut into retrieval units, sentence-aligned and bounded in length.

A passage never crosses a programme or sub-item boundary, so its breadcrumb
(section › programme › sub-item) and its URLs are exact. A programme whose text fits in one
passage stays whole. The displayed `text` is corpus text verbatim; `embedded` (for the
dense retriever) adds the breadcrumb, `indexed` (for BM25) the link titles too.

A programme with a profile (`terms:` in the corpus) also gets profile units: its Japanese terms
in one and its Latin-script (English) terms in another, so that each is a sharp vector for
questions in its language. They are matched like passages but never shown: when one wins, the
desk shows the programme's best real passage (`Passage.profile` tells them apart).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from chatbot.corpus import Programme
from chatbot.text import sentences

# Characters per passage. Chosen by hybrid hit@1 on the tuning queries (embedded mE5-small,
# 2026-11-25): 100 → 0.922, 150 → 0.931, 200 → 0.905, 300 → 0.914, 600 → 0.905. Shorter
# passages give the dense retriever a sharper vector. mE5 reads at most 512 tokens.
DEFAULT_MAX_CHARS = 150
SEPARATOR = " › "


@dataclass(frozen=True)
class Passage:
    id: int  # position in corpus order; ties in ranking break on it
    key: str
    section: str  # "1. スタートアップへの支援"
    title: str  # programme title
    subitem: str  # "① …" or ""
    text: str  # verbatim corpus text
    urls: tuple[str, ...]
    link_titles: tuple[str, ...]
    profile: bool = False  # a profile unit: matched, never shown

    @property
    def breadcrumb(self) -> str:
        parts = [self.section, f"({self.key.rsplit('(', 1)[1]} {self.title}", self.subitem]
        return SEPARATOR.join(p for p in parts if p)

    @property
    def embedded(self) -> str:
        """What the dense retriever sees: breadcrumb and text. Link titles stay out: several
        are long English titles (section 9) that would pull every English question there."""
        return f"{self.breadcrumb}\n{self.text}"

    @property
    def indexed(self) -> str:
        """What BM25 sees: the embedded text and the titles of the links, which carry names."""
        return "\n".join([self.embedded, *self.link_titles])


def split(programmes: list[Programme], max_chars: int = DEFAULT_MAX_CHARS) -> list[Passage]:
    """Cut every programme into passages of at most `max_chars` characters of text."""
    if max_chars < 20:  # below a short sentence, passages are fragments
        raise ValueError(f"max_chars must be at least 20, got {max_chars}")
    out: list[Passage] = []
    for programme in programmes:
        for subitem, chunk in _chunks(programme, max_chars):
            links = tuple(link for link in programme.links if link.subitem in ("", subitem))
            out.append(Passage(
                id=len(out), key=programme.key, section=programme.section_title,
                title=programme.title, subitem=subitem, text=chunk,
                urls=tuple(dict.fromkeys(link.url for link in links)) or tuple(programme.urls),
                link_titles=tuple(dict.fromkeys(link.title for link in links)),
            ))
        for terms, sep in _profile_groups(programme.terms):
            out.append(Passage(id=len(out), key=programme.key, section=programme.section_title,
                               title=programme.title, subitem="", text=sep.join(terms),
                               urls=tuple(programme.urls), link_titles=(), profile=True))
    return out


_LATIN_TERM = re.compile(r"^[\x00-\x7f]+$")


def _profile_groups(terms: list[str]) -> list[tuple[list[str], str]]:
    """The programme's terms as profile units, each with the separator it is written with:
    Japanese ones, then English (ASCII-only) ones."""
    english = [t for t in terms if _LATIN_TERM.match(t)]
    japanese = [t for t in terms if not _LATIN_TERM.match(t)]
    return [(group, sep) for group, sep in ((japanese, "、"), (english, ", ")) if group]


def _chunks(programme: Programme, max_chars: int):
    """(sub-item, text) pairs: whole blocks where they fit, else greedy sentence packing.

    Sentences of one line are rejoined without a separator and lines with a newline, so a
    passage's text is a verbatim span of the corpus.
    """
    for block in programme.blocks:
        pieces = []
        for lineno, line in enumerate(block.text.splitlines()):
            indent = line[: len(line) - len(line.lstrip())]  # nested list items keep their place
            for i, sentence in enumerate(_bounded(sentences(line), max_chars)):
                pieces.append((lineno, indent + sentence if i == 0 else sentence))
        current: list[tuple[int, str]] = []
        for piece in pieces:
            if current and sum(len(s) for _, s in current) + len(piece[1]) > max_chars:
                yield block.subitem, _join(current)
                current = []
            current.append(piece)
        if current:
            yield block.subitem, _join(current)


def _join(pieces: list[tuple[int, str]]) -> str:
    text = pieces[0][1]
    for (prev, _), (lineno, s) in zip(pieces, pieces[1:]):
        text += s if lineno == prev else "\n" + s
    return text


def _bounded(parts: list[str], max_chars: int) -> list[str]:
    """Cut a sentence longer than max_chars after its last 、 that fits (or hard, if none)."""
    out = []
    for part in parts:
        while len(part) > max_chars:
            cut = part.rfind("、", 0, max_chars) + 1 or max_chars
            out.append(part[:cut])
            part = part[cut:]
        if part:
            out.append(part)
    return out
