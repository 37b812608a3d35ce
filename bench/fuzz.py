"""Fuzz the desk's whole question path in-process with nasty strings: search, the log, the staff
ranking and the HTML rendering. Issue 8.

Each input goes through what a visitor's question goes through in the desk (chatbot.desk.service.Desk
over the real index, model and an SQLite log in a temporary directory):

    Desk.ask(q) → the /search JSON, or Desk.staff_search(q) (the console's answer and its top-10 table)
    for every 5th input; render.answer_html / esc(q) (chat), render.result_html (console)

and is checked
for: no exception; the answer's contract shape; JSON that encodes as UTF-8; a clear
message (and no results) for empty or over-long questions; rendered HTML with no tag or attribute
but render.py's own (no <script>, no on*=, no javascript: href) however the input is made.

Inputs come from a seeded random generator of nasty strings: control characters, lone surrogates,
bidi and zero-width marks, emoji ZWJ sequences, HTML/script/markdown snippets, entity look-alikes,
random code points of every plane, Japanese from the corpus mixed with all of the above, and
lengths from 0 to 100 000 characters. Bounded: stops after --n inputs or --max-seconds.

    python bench/fuzz.py                      # 10 000 inputs, writes bench/results/fuzz.json
    python bench/fuzz.py --n 20000 --seed 7
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DEFAULT_JSON = REPO / "bench" / "results" / "fuzz.json"

from chatbot.desk.render import audit  # noqa: E402  the renderer's own tag/attribute contract

ANSWER_KEYS = {"query", "abstained", "ambiguous", "decision", "results", "confidence", "followed_context"}
RESULT_KEYS = {"key", "title", "section", "text", "urls", "score", "subitem", "breadcrumb"}

SNIPPETS = [
    "<script>alert(1)</script>", "<img src=x onerror=alert(1)>", "<svg/onload=alert(1)>", "</mark><b>", "<!--",
    "<![CDATA[x]]>", "<?xml?>", "javascript:alert(1)", "[x](javascript:alert(1))", "![i](https://e.invalid/x.png)",
    "**太字**", "`code`", "&amp;", "&lt;script&gt;", "&#60;", "&#x3c;", "\"'><", "{{7*7}}", "${7*7}", "%s%n",
    "' OR 1=1 --", "'; DROP TABLE questions; --", "\\", "../../etc/passwd", "\u202e", "\u202d", "\u2066", "\u200f",
    "\u200b", "\u200d", "\ufeff", "\u2028", "\u2029", "\x00", "\x1b[31m", "\x7f", "\x85", "\r\n", "\t", "\u3000",
    "\ud800", "\udfff", "\udc80", "\ufffd", "\U0010ffff", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🧑🏽‍💻", "🇯🇵", "é", "Å",
    "ｱｲﾊﾟｽ", "ＩＰＡＳ", "①②", "〜～", "？？？", "！！！", "。。。", "سلام", "שלום", "ไทย", "ᄀᄀᄀ", "Z̴̡̛a̷l̸g̵o̶",
]


class Nasty:
    """A seeded generator of hostile questions."""

    def __init__(self, seed: int, japanese: list[str]):
        self.rng = random.Random(seed)
        self.japanese = japanese

    def codepoint(self) -> str:
        r = self.rng.random()
        if r < 0.3:
            return chr(self.rng.randrange(0, 0x80))
        if r < 0.6:
            return chr(self.rng.randrange(0x3000, 0xA000))
        if r < 0.9:
            return chr(self.rng.randrange(0, 0x10000))
        return chr(self.rng.randrange(0x10000, 0x110000))

    def piece(self) -> str:
        r = self.rng.random()
        if r < 0.35:
            return self.rng.choice(SNIPPETS)
        if r < 0.6:
            line = self.rng.choice(self.japanese)
            start = self.rng.randrange(len(line))
            return line[start:start + self.rng.randrange(1, 40)]
        return "".join(self.codepoint() for _ in range(self.rng.randrange(1, 12)))

    def __call__(self) -> str:
        r = self.rng.random()
        if r < 0.01:  # very long: the limit and its message
            piece = self.piece()
            return (piece * (100_000 // max(1, len(piece)) + 1))[: self.rng.randrange(1001, 100_001)]
        if r < 0.03:
            return self.rng.choice(["", " ", "\u3000\n\t", "\x00", "\u200b\u200d", "？！。、", "\ud800"])
        size = self.rng.choice([1, 2, 3, 5, 8, 15, 40])
        text = "".join(self.piece() for _ in range(self.rng.randrange(1, size + 1)))
        if r > 0.97:  # around the limit
            text = (text * (1000 // max(1, len(text)) + 2))[: self.rng.randrange(990, 1010)]
        return text


def check(desk, render, question: str, limit: int, staff: bool = True) -> list[str]:
    """The problems with one input (empty when all is well)."""
    problems = []
    if staff:
        out, rows, _ = desk.staff_search(question, 10)
    else:
        (out, _), rows = desk.ask(question, channel="api"), []
    if not (ANSWER_KEYS <= set(out) <= ANSWER_KEYS | {"message"}):
        problems.append(f"keys {sorted(out)}")
    json.dumps(out, ensure_ascii=False).encode("utf-8")
    for r in out["results"]:
        if set(r) != RESULT_KEYS:
            problems.append(f"result keys {sorted(r)}")
    if out.get("message"):
        if out["results"] or not out["abstained"]:
            problems.append("a message with results")
        if "長すぎます" in out["message"] and f"{limit}文字以内" not in out["message"]:
            problems.append("the length message does not state the limit")
    html = render.answer_html(out, desk.link_titles)
    bad = audit(html) + audit(render.esc(question))
    if "<script" in html.lower():
        bad.append("<script")
    if bad:
        problems.append(f"markup in the chat: {bad[:3]}")
    for r in rows[:3]:
        bad_staff = audit(render.result_html(r, question, desk.link_titles))
        if bad_staff:
            problems.append(f"markup in the staff view: {bad_staff[:3]}")
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="inputs (default 10 000)")
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--max-seconds", type=float, default=900, help="stop earlier than --n after this long")
    parser.add_argument("--index-dir", type=Path, help="a built index (default: build one in a temporary directory)")
    parser.add_argument("--staff-every", type=int, default=5, help="the staff search instead of the API search for every k-th input")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args(argv)

    from chatbot import config, corpus, embed, index, search
    from chatbot.desk import render, service
    from chatbot.store import open_store

    shm = Path("/dev/shm")  # the log's fsyncs are not what is being fuzzed
    with tempfile.TemporaryDirectory(prefix="madoguchi-fuzz-", dir=shm if shm.is_dir() else None) as tmp:
        t0 = time.perf_counter()
        encoder = embed.load_encoder()
        if args.index_dir:
            built = index.load(args.index_dir, corpus_dir=config.corpus_dir(), model_id=encoder.model_id)
        else:
            built = index.build(config.corpus_dir(), Path(tmp) / "index", encoder, progress=False)
        programmes = corpus.load(config.corpus_dir())
        store = open_store("", Path(tmp) / "data", "fuzz")
        desk = service.Desk(search.Searcher(built, encoder), programmes, store)
        setup_s = time.perf_counter() - t0
        japanese = [line for p in programmes for line in p.text.splitlines() if line.strip()]
        generate = Nasty(args.seed, japanese)

        failures: list[dict] = []
        kinds: dict[str, int] = {}
        lengths = []
        messages = 0
        started = time.perf_counter()
        done = 0
        for done in range(1, args.n + 1):
            question = generate()
            lengths.append(len(question))
            try:
                problems = check(desk, render, question, search.MAX_QUERY_CHARS, staff=done % args.staff_every == 0)
            except Exception as e:  # noqa: BLE001 - every exception is a finding
                problems = [f"{type(e).__name__}: {e}"[:300] + " | " + traceback.format_exc(limit=3)[-400:]]
            if problems:
                kind = problems[0].split(":")[0]
                kinds[kind] = kinds.get(kind, 0) + 1
                if len(failures) < 25:
                    failures.append({"input": question[:300], "input_len": len(question), "problems": problems})
            if done % 1000 == 0:
                rate = done / (time.perf_counter() - started)
                print(f"  {done} inputs, {rate:.1f}/s, {sum(kinds.values())} failures", flush=True)
            if time.perf_counter() - started > args.max_seconds:
                break
        elapsed = time.perf_counter() - started
        store.flush(60)
        logged = store.backend.count()["questions"]
        messages = done - logged  # empty / over-long questions are answered with a message, not logged
        store_error = store.last_error or store.spool_error
        store.close()

    lengths.sort()
    result = {
        "inputs": done, "failures": sum(kinds.values()), "failure_kinds": kinds, "failure_samples": failures,
        "elapsed_s": round(elapsed, 1), "inputs_per_s": round(done / elapsed, 1), "setup_s": round(setup_s, 1),
        "answered_with_a_message": messages, "logged_questions": logged, "store_last_error": store_error,
        "input_length": {"max": lengths[-1], "p50": lengths[len(lengths) // 2],
                         "over_limit": sum(n > search.MAX_QUERY_CHARS for n in lengths)},
        "meta": {"seed": args.seed, "staff_ranking_every": args.staff_every, "python": platform.python_version(), "index": str(built.root),
                 "model": built.model_id, "limit_chars": search.MAX_QUERY_CHARS},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))  # ASCII escapes: samples may hold lone surrogates
    print(f"\n{done} inputs in {elapsed:.1f} s ({result['inputs_per_s']}/s): {result['failures']} failures"
          f"{' ' + json.dumps(kinds, ensure_ascii=False) if kinds else ''}; "
          f"{messages} answered with a message, {logged} logged; store error: {store_error or 'none'}; "
          f"results in {args.json}")
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
