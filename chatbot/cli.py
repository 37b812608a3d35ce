"""The command line: `python -m chatbot COMMAND`.

Answers go to stdout, progress and diagnostics to stderr. Errors meant for users are one
line; heavy libraries are imported inside the commands that need them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from chatbot import __version__, config
from chatbot.errors import MadoguchiError

EPILOG = """examples:
  python -m chatbot list --json
  python -m chatbot build
  python -m chatbot ask "起業したばかりで知財の専門家に相談したい" --json
  python -m chatbot ask "支援期間は？" --context 1.(1)
  printf '質問1\\n質問2\\n' | python -m chatbot ask
  python -m chatbot eval --queries eval/queries.jsonl --all-methods

environment: MADOGUCHI_CORPUS, MADOGUCHI_INDEX, MADOGUCHI_DATA, MADOGUCHI_CACHE, MADOGUCHI_MODEL
move the corpus, index, desk data, model cache and choose the embedding model."""


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        sys.exit(2)
    try:
        args.func(args)
    except MadoguchiError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:  # `… | head` closed the pipe: not an error
        sys.stderr.close()
        sys.exit(0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m chatbot",
        description="madoguchi: find the JPO support programme that fits a question (chapter 5).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"madoguchi {__version__}")
    parser.add_argument("--corpus", type=Path, help="corpus directory (default: $MADOGUCHI_CORPUS or ./corpus)")
    commands = parser.add_subparsers(metavar="COMMAND")

    p = commands.add_parser("list", help="list the programmes in corpus order")
    p.add_argument("--json", action="store_true", help='JSON: [{"key","section","title","urls"}]')
    p.set_defaults(func=cmd_list)
    return parser


def corpus_dir(args) -> Path:
    return args.corpus or config.corpus_dir()


def cmd_list(args) -> None:
    from chatbot import corpus

    programmes = corpus.load(corpus_dir(args))
    if args.json:
        json.dump([p.summary() for p in programmes], sys.stdout, ensure_ascii=False, indent=1)
        print()
        return
    for p in programmes:
        print(f"{p.key:8} {p.title}")
        for url in p.urls:
            print(f"{'':8}   {url}")
