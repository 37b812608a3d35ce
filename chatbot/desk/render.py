"""Answers as HTML for the chat, built so that no corpus or visitor text is ever markup.

Every piece of text is escaped with `esc()` first and only then wrapped in the few tags this
module writes itself (<mark>, <a>, <details>, …). Highlighting decides its spans on the raw text
and escapes each segment, so a term can never cut an entity like `&amp;` in half. The Chatbot
still sanitises what it receives (defence in depth), but nothing here relies on that.
"""

from __future__ import annotations

import html
import re
import unicodedata
from html.parser import HTMLParser

from chatbot import text

INPIT_DESK = ("INPIT知財総合支援窓口", "https://chizai-portal.inpit.go.jp/")
FAQ_PORTAL = ("知的財産相談・支援ポータルサイト", "https://faq.inpit.go.jp/")
OTHERS_SHOWN = 3  # further candidates under <details>
SUGGESTED = 3  # programmes offered as choices when the search is not sure


def esc(value: str) -> str:
    return html.escape(value, quote=True)


def lines(value: str) -> str:
    """Escaped text with its line breaks kept (the chat renders HTML, not markdown)."""
    return "<br>".join(esc(line) for line in value.split("\n"))


def link(url: str, title: str = "") -> str:
    """An <a> for a corpus URL; anything but http(s) stays plain text."""
    if not url.startswith(("https://", "http://")):
        return esc(title or url)
    label = esc(title) if title else esc(url)
    return f'<a href="{esc(url)}" target="_blank" rel="noopener noreferrer">{label}</a>'


# -- highlighting --------------------------------------------------------------------------------

def query_terms(question: str) -> list[str]:
    """What to mark in a passage: the question's BM25 terms and the surfaces of its content words.

    Single characters are left out (一字 marks 「国」 and 「の」 everywhere, which helps nobody).
    """
    terms = set(text.tokens(question))
    for word in text.words(question):
        if word.pos1 in ("名詞", "動詞", "形容詞", "接頭辞", "接尾辞") and word.pos2 != "非自立可能":
            terms.add(word.surface.lower())
    return sorted((t for t in terms if len(t) >= 2), key=len, reverse=True)


def _folded(raw: str) -> tuple[str, list[int]]:
    """NFKC-lowercased raw text, with the raw position of every folded character.

    The corpus keeps full-width forms （ＩＰＡＳ） that questions normalise away; matching on the
    folded text and marking the raw one keeps both sides right.
    """
    out, where = [], []
    for i, ch in enumerate(raw):
        folded = unicodedata.normalize("NFKC", ch).lower()
        out.append(folded)
        where.extend([i] * len(folded))
    return "".join(out), where


def highlight(raw: str, question: str) -> str:
    """Escaped `raw` with the question's terms wrapped in <mark>; line breaks as <br>."""
    terms = query_terms(question) if question.strip() else []
    folded, where = _folded(raw)
    spans: list[list[int]] = []
    for term in terms:
        start = folded.find(term)
        while start != -1:
            end = start + len(term)
            spans.append([where[start], where[end - 1] + 1])
            start = folded.find(term, end)
    spans.sort()
    merged: list[list[int]] = []
    for s, e in spans:
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    out, pos = [], 0
    for s, e in merged:
        out.append(lines(raw[pos:s]))
        out.append(f"<mark>{lines(raw[s:e])}</mark>")
        pos = e
    out.append(lines(raw[pos:]))
    return "".join(out)


# -- answers ---------------------------------------------------------------------------------------

def urls_html(urls: list[str], titles: dict[str, str]) -> str:
    if not urls:
        return ""
    items = "".join(f"<li>{link(u, titles.get(u, ''))}</li>" for u in urls)
    return f'<div class="desk-src">出典・詳しくは:<ul>{items}</ul></div>'


def result_html(result: dict, question: str, titles: dict[str, str], lead: str = "") -> str:
    """The best programme: title, breadcrumb, highlighted passage, source links."""
    parts = [f'<p class="desk-lead">{esc(lead)}</p>' if lead else "",
             f'<h3 class="desk-title">{esc(result["title"])}</h3>',
             f'<p class="desk-crumb">{esc(result["breadcrumb"])}</p>',
             f'<blockquote class="desk-passage">{highlight(result["text"], question)}</blockquote>',
             urls_html(result["urls"], titles)]
    return "".join(parts)


def others_html(results: list[dict], question: str, titles: dict[str, str]) -> str:
    if not results:
        return ""
    items = [_candidate(r, question, titles, f'<b>{esc(r["title"])}</b><br>') for r in results[:OTHERS_SHOWN]]
    return (f'<details class="desk-others"><summary>ほかの候補（{len(items)}件）</summary>'
            f'<ol>{"".join(items)}</ol></details>')


def _candidate(r: dict, question: str, titles: dict[str, str], heading: str) -> str:
    """One candidate programme as a list item: heading, breadcrumb, highlighted passage, first link."""
    first = r["urls"][0] if r["urls"] else ""
    return (f'<li>{heading}<span class="desk-crumb">{esc(r["breadcrumb"])}</span>'
            f'<br>{highlight(r["text"], question)}'
            + (f"<br>{link(first, titles.get(first, ''))}" if first else "") + "</li>")


def abstained_html(message: str = "") -> str:
    """No programme matches: say so kindly and say where to ask instead. Never a fake match."""
    reason = esc(message) if message else "申し訳ありません。ご質問に合う支援施策は、この資料（特許庁 年次報告書 第5章）の中に見つかりませんでした。"
    return (f'<p class="desk-lead">{reason}</p>'
            "<p>言い換えて質問していただくか、窓口の担当者にお声がけください。知的財産のご相談は次の窓口でも受け付けています。</p>"
            f"<ul><li>{link(INPIT_DESK[1], INPIT_DESK[0])}（全国の相談窓口）</li>"
            f"<li>{link(FAQ_PORTAL[1], FAQ_PORTAL[0])}（よくある質問）</li></ul>")


def suggest_html(results: list[dict], question: str, titles: dict[str, str]) -> str:
    """Low confidence: the nearest programmes as choices, and a word that staff can help."""
    items = [_candidate(r, question, titles, f'<h3 class="desk-title">{esc(r["title"])}</h3>') for r in results]
    return ('<p class="desk-lead">はっきりとは分かりませんでしたが、近いと思われる施策はこちらです。'
            '下のボタンから選ぶと詳しく表示します。</p>'
            f'<ol class="desk-suggest">{"".join(items)}</ol>'
            '<p>どれも違うときは、窓口の担当者にお声がけください。一緒にお探しします。</p>')


def answer_html(answer: dict, titles: dict[str, str], followed_title: str = "") -> str:
    """The chat message for one answer (answer.to_json())."""
    if answer["abstained"] or not answer["results"]:
        return abstained_html(answer.get("message", ""))
    best, rest = answer["results"][0], answer["results"][1:]
    if answer.get("decision") == "suggest":
        return suggest_html(answer["results"][:SUGGESTED], answer["query"], titles)
    if answer.get("followed_context"):
        lead = f"「{followed_title or best['title']}」についてのお答えです。"
    elif answer["ambiguous"]:
        lead = "近い施策がいくつかあります。いちばん近いのはこちらです（下の「もしかして」からも選べます）。"
    else:
        lead = "この支援施策が近そうです。"
    return result_html(best, answer["query"], titles, lead) + others_html(rest, answer["query"], titles)


def programme_html(programme, lead: str = "") -> str:
    """A whole programme (chosen from the categories or from もしかして)."""
    titles = {link_.url: link_.title for link_ in programme.links}
    crumb = f"{programme.section_title} › ({programme.number}) {programme.title}"
    return "".join([f'<p class="desk-lead">{esc(lead)}</p>' if lead else "",
                    f'<h3 class="desk-title">{esc(programme.title)}</h3>',
                    f'<p class="desk-crumb">{esc(crumb)}</p>',
                    f'<blockquote class="desk-passage">{lines(programme.text)}</blockquote>',
                    urls_html(programme.urls, titles)])


def qr_html(programme) -> str:
    """The programme's first URL as an inline SVG QR code (no file is written or served)."""
    import segno

    if programme is None:
        return '<div class="desk-qr"><p>施策を選ぶと、ここに案内ページのQRコードが出ます。</p></div>'
    if not programme.urls:
        return f'<div class="desk-qr"><b>{esc(programme.title)}</b><p>この施策には案内ページがありません。</p></div>'
    url = programme.urls[0]
    svg = segno.make(url, error="m").svg_inline(scale=4, title=url)
    return (f'<div class="desk-qr"><b>{esc(programme.title)}</b>'
            f'<div class="desk-qr-code">{svg}</div>'
            f'<p>スマートフォンで読み取ると案内ページが開きます。<br>{link(url)}</p></div>')


# -- the contract checked by the tests and bench/fuzz.py -----------------------------------------
# Everything this module writes uses only these tags and attributes; anything else in rendered
# HTML (or a "<" outside them) can only have come from unescaped input.
ALLOWED_TAGS = {"p", "h3", "blockquote", "mark", "br", "a", "div", "ul", "li", "ol", "details", "summary", "b", "span"}
ALLOWED_ATTRS = {"class", "href", "target", "rel"}


class TagAudit(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.bad: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag not in ALLOWED_TAGS:
            self.bad.append(f"<{tag}>")
        for name, value in attrs:
            if name not in ALLOWED_ATTRS:
                self.bad.append(f"{tag}[{name}]")
            if name == "href" and not (value or "").startswith(("https://", "http://")):
                self.bad.append(f"href={value!r}")

    def handle_comment(self, data):
        self.bad.append("<!--")

    def handle_decl(self, decl):
        self.bad.append("<!")

    def unknown_decl(self, data):
        self.bad.append("<![")

    def handle_pi(self, data):
        self.bad.append("<?")


OWN_TAG = re.compile(r"</?(?:%s)(?:\s[^<>]*)?>" % "|".join(sorted(ALLOWED_TAGS, key=len, reverse=True)))


def audit(html: str) -> list[str]:
    """Tags or attributes render.py does not write, and any '<' that is not part of one of its tags."""
    parser = TagAudit()
    parser.feed(html)
    parser.close()
    if "<" in OWN_TAG.sub("", html):
        parser.bad.append("a bare '<'")
    return parser.bad
