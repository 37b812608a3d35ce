"""The command line: `python -m chatbot COMMAND`.

Answers go to stdout, progress and diagnostics to stderr. Errors meant for users are one
line; heavy libraries are imported inside the commands that need them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

from chatbot import __version__, config
from chatbot.errors import MadoguchiError

EPILOG = """examples:
  python -m chatbot list --json
  python -m chatbot build
  python -m chatbot ask "起業したばかりで知財の専門家に相談したい" --json
  python -m chatbot ask "支援期間は？" --context 1.(1)
  printf '質問1\\n質問2\\n' | python -m chatbot ask
  python -m chatbot eval --queries eval/queries.jsonl --split test --all-methods --plot eval/plots/test
  python -m chatbot eval --queries eval/real_style.jsonl --split test --no-bank
  python -m chatbot bank add 8.(4) "電子証明書の更新ってどうやるの？" --by sato
  python -m chatbot bank export > bank-backup.jsonl
  python -m chatbot calibrate          # choose search settings on the tune split
  python -m chatbot report             # write eval/REPORT.md
  python -m chatbot bench --only search

  python -m chatbot db status --db postgresql://madoguchi@127.0.0.1/madoguchi
  python -m chatbot db prune --older-than 90d
  python -m chatbot staff add sato     # a console login (asks for the password twice)


settings: each command takes the flags under "settings" in its --help, and each flag has an
environment variable (README "Configuration"; a flag wins over its variable)."""


def main(argv: list[str] | None = None) -> None:
    os.umask(0o077)  # as the desk: the data files it writes are this user's alone
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        sys.exit(2)
    try:
        config.use(args)
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
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter, parents=[config.parser()],
    )
    parser.add_argument("--version", action="version", version=f"madoguchi {__version__}")
    commands = parser.add_subparsers(metavar="COMMAND")

    def command(name: str, **kwargs) -> argparse.ArgumentParser:
        # every command takes the shared settings, before or after its name
        return commands.add_parser(name, parents=[config.parser()], **kwargs)

    p = command("list", help="list the programmes in corpus order")
    p.add_argument("--json", action="store_true", help='JSON: [{"key","section","title","urls"}]')
    p.set_defaults(func=cmd_list)

    p = command("build", help="build the search index (FAISS + BM25) in index/")
    p.add_argument("--max-chars", type=int, default=None, help="passage length bound in characters")
    p.set_defaults(func=cmd_build)

    p = command("ask", help="ask questions; with no question, read one per line from stdin")
    p.add_argument("question", nargs="?", help="the question (omit to read stdin)")
    p.add_argument("--top-k", type=int, default=config.TOP_K, help=f"how many programmes (default {config.TOP_K})")
    p.add_argument("--context", default=None, help="key of the programme the conversation is on, e.g. 1.(1)")
    p.add_argument("--json", action="store_true", help="print JSON (always on when reading stdin)")
    p.add_argument("--jsonl", action="store_true", help='stdin lines are {"query", "context"?} objects')
    p.add_argument("--method", default=config.METHODS[0], choices=config.METHODS)
    p.set_defaults(func=cmd_ask)

    p = command("eval", help="evaluate on query sets (JSONL) and print the metrics")
    p.add_argument("--queries", type=Path, action="append", required=True, help="JSONL query file (repeatable)")
    p.add_argument("--split", choices=["tune", "test"], help="only the queries of this split")
    p.add_argument("--method", default=config.METHODS[0], choices=config.METHODS)
    p.add_argument("--all-methods", action="store_true", help="hybrid, dense and bm25 side by side")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--failures", action="store_true", help="list the questions missed at rank 1")
    p.add_argument("--no-bank", action="store_true", help="without the question bank (profile asks and bank file)")
    p.add_argument("--plot", type=Path, help="write PNG plots with this path prefix")
    p.set_defaults(func=cmd_eval)

    p = command("report", help="generate eval/REPORT.md (tables, plots, benchmark figures)")
    p.set_defaults(func=cmd_report)

    p = command("bench", help="run the benchmarks in bench/ and print their figures")
    p.add_argument("--only", default="search,http,faiss",
                   help="which: search,http,faiss,replicas (default: search,http,faiss; replicas needs nginx "
                        "and PostgreSQL's server installed)")
    p.add_argument("--full", action="store_true", help="FAISS up to 1M vectors (default: 10k and 100k)")
    p.add_argument("--json", action="store_true", help="print the combined JSON only")
    p.set_defaults(func=cmd_bench)

    p = command("bank", help="the question bank: labelled questions matched question to question")
    p.add_argument("action", choices=["add", "remove", "list", "import", "export"],
                   help="add KEY QUESTION; remove QUESTION; list; import FILE (JSONL {\"key\",\"question\"}); "
                        "export (JSONL to stdout)")
    p.add_argument("args", nargs="*", help="add: KEY QUESTION; remove: QUESTION; import: FILE")
    p.add_argument("--by", default="", help="who adds (a staff name), kept with the question")
    p.add_argument("--json", action="store_true", help="list: JSON")
    p.set_defaults(func=cmd_bank)

    p = command("calibrate", help="choose fusion, abstention and follow-up settings on the tune split")
    p.add_argument("--queries", type=Path, action="append",
                   help="JSONL query file (repeatable; default: eval/queries.jsonl and eval/real_style.jsonl)")
    p.set_defaults(func=cmd_calibrate)

    p = command("db", help="the desk's log database: status, migrate, flush spools, clear")
    p.add_argument("action", choices=["status", "migrate", "flush", "prune", "clear"],
                   help="status: where, schema, counts; migrate: bring the schema up to date; flush: write "
                        "spools left by stopped desks; prune: delete what is older than --older-than; "
                        "clear: delete every stored question and feedback")
    p.add_argument("--older-than", metavar="AGE", help="prune: an age such as 90d (days) or 12w (weeks)")
    p.add_argument("--yes", action="store_true", help="clear: really delete")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_db)

    p = command("staff", help="staff accounts for the console at /staff (kept in the log's database)")
    p.add_argument("action", choices=["add", "remove", "list"],
                   help="add: create an account or set a new password (also unlocks); remove; list")
    p.add_argument("name", nargs="?", help="the staff member's login name (add, remove)")
    p.add_argument("--password-stdin", action="store_true",
                   help="add: read the password from the first line of stdin instead of asking")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_staff)
    return parser


def cmd_list(args) -> None:
    from chatbot import corpus

    programmes = corpus.load(config.corpus_dir())
    if args.json:
        json.dump([p.summary() for p in programmes], sys.stdout, ensure_ascii=False, indent=1)
        print()
        return
    for p in programmes:
        print(f"{p.key:8} {p.title}")
        for url in p.urls:
            print(f"{'':8}   {url}")


def cmd_build(args) -> None:
    import time

    from chatbot import embed, index, passages

    started = time.perf_counter()
    print("loading the embedding model…", file=sys.stderr)
    encoder = embed.load_encoder(config.model_name(), runtime="sentence-transformers")
    built = index.build(config.corpus_dir(), config.index_dir(), encoder,
                        max_chars=args.max_chars or passages.DEFAULT_MAX_CHARS, progress=True)
    size = sum(f.stat().st_size for f in built.root.rglob("*") if f.is_file())
    m = built.manifest
    print(f"built {built.root}: {m['corpus']['passages']} passages of {m['corpus']['programmes']} programmes, "
          f"model {m['model']['id']}, {size / 1e6:.1f} MB, {time.perf_counter() - started:.1f} s")


def open_searcher(args):
    """The engine over the built index, refusing a missing or stale one."""
    from chatbot import search

    return search.open_searcher(use_bank=not getattr(args, "no_bank", False))


def cmd_ask(args) -> None:
    from chatbot import search
    from chatbot.errors import QueryError

    searcher = open_searcher(args)

    def answer(query: str, context: str | None) -> dict:
        try:
            return searcher.search(query, top_k=args.top_k, context=context or None,
                                   method=args.method).to_json()
        except QueryError as e:  # the query echoed is scrubbed: a lone surrogate cannot be printed
            return search.Answer.refused(query, str(e)).to_json()

    if args.question is not None:
        out = answer(args.question, args.context)
        if "error" in out:
            raise QueryError(out["error"])
        if args.json:
            print(json.dumps(out, ensure_ascii=False))
        else:
            print_answer(out)
        return
    # stdin: one question (or JSON object) a line in, one JSON object a line out
    stdin = (line.decode("utf-8", errors="replace") for line in sys.stdin.buffer)
    for lineno, line in enumerate(stdin, start=1):
        line = line.rstrip("\r\n")
        if args.jsonl:
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                query, context = item["query"], item.get("context") or args.context
                if not isinstance(query, str):
                    raise TypeError("query must be a string")
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                print(json.dumps({"line": lineno, "error": f"not a {{\"query\", \"context\"?}} object: {e}"},
                                 ensure_ascii=False), flush=True)
                continue
        else:
            query, context = line, args.context
        print(json.dumps(answer(query, context), ensure_ascii=False), flush=True)


def print_answer(out: dict) -> None:
    if out.get("message"):
        print(out["message"])
    if out["abstained"]:
        print("該当する支援施策が見つかりませんでした。" if not out.get("message") else "")
        return
    if out.get("decision") == "suggest":
        print("近いと思われる施策（確かではありません。窓口の担当者もお手伝いできます）:")
    elif out["ambiguous"]:
        print("候補が複数あります:")
    for rank, r in enumerate(out["results"], start=1):
        print(f"{rank}. [{r['key']}] {r['breadcrumb']}  (score {r['score']})")
        for line in r["text"].splitlines():
            print(f"     {line}")
        for url in r["urls"]:
            print(f"     {url}")


def cmd_eval(args) -> None:
    from chatbot import evaluation

    searcher = open_searcher(args)
    queries = evaluation.load_queries(args.queries, split=args.split)
    methods = ["hybrid", "dense", "bm25"] if args.all_methods else [args.method]
    results, runs = [], {}
    for method in methods:
        runs[method] = evaluation.run(searcher, queries, method)
        results.append(evaluation.metrics(runs[method], method))
    if args.plot:
        from chatbot import plots

        for path in plots.evaluation(results, runs, searcher.settings, args.plot):
            print(f"wrote {path}", file=sys.stderr)
    if args.json:
        out = results[0] if len(results) == 1 else results
        if args.failures:
            out = {"metrics": out, "failures": {m: evaluation.failures(runs[m]) for m in methods}}
        print(json.dumps(out, ensure_ascii=False, indent=1))
        return
    print_metrics(results)
    if args.failures:
        for method in methods:
            print(f"\nmissed at rank 1 ({method}):")
            for f in evaluation.failures(runs[method]):
                context = f" [context {f['context']}]" if f["context"] else ""
                print(f"  {f['id']}: {f['query']}{context}\n      expected {f['relevant'] or 'abstain'}, got {f['got']}")


def print_metrics(results: list[dict]) -> None:
    names = ["n", "hit@1", "hit@3", "mrr@10", "url@1", "abstain_precision", "abstain_recall",
             "false_abstain_rate", "in_scope_suggest", "out_of_scope_answer", "latency p50 ms", "latency p95 ms"]
    print(f"{'':20}" + "".join(f"{m['method']:>10}" for m in results))
    for name in names:
        cells = []
        for m in results:
            value = m["latency_ms"][name.split()[1]] if name.startswith("latency") else m[name]
            cells.append(f"{'-' if value is None else value:>10}")
        print(f"{name:20}" + "".join(cells))


def cmd_calibrate(args) -> None:
    from chatbot import calibrate, evaluation

    searcher = open_searcher(args)
    files = args.queries or [config.REPO / "eval" / "queries.jsonl", config.REPO / "eval" / "real_style.jsonl"]
    queries = evaluation.load_queries(files, split="tune")
    if not args.queries:  # the shared dev queries may be tuned on too (they have no test role)
        files.append(config.REPO / "tests" / "data" / "dev_queries.jsonl")
        queries += evaluation.load_queries(files[-1:])
    result = calibrate.calibrate(searcher, queries, log=lambda line: print(line, file=sys.stderr))
    for path in calibrate.save(searcher.index.model_id, result, ", ".join(str(f) for f in files)):
        print(f"wrote {path}", file=sys.stderr)
    print(json.dumps(result["settings"], ensure_ascii=False, indent=1))


def cmd_report(args) -> None:
    from chatbot import report

    print(f"wrote {report.generate(open_searcher(args))}", file=sys.stderr)


def cmd_bank(args) -> None:
    from chatbot import bank, corpus

    path = config.bank_file()
    keys = {p.key for p in corpus.load(config.corpus_dir())}
    need = {"add": 2, "remove": 1, "import": 1, "list": 0, "export": 0}[args.action]
    if len(args.args) != need:
        usage = {"add": "KEY QUESTION", "remove": "QUESTION", "import": "FILE", "list": "", "export": ""}
        raise MadoguchiError(f"bank {args.action} takes {need} argument(s): {usage[args.action]}".rstrip(": "))
    if args.action == "add":
        counts = bank.add(path, [{"key": args.args[0], "question": args.args[1]}], keys, by=args.by)
        print(json.dumps({"bank": str(path), **counts}, ensure_ascii=False))
    elif args.action == "remove":
        print(json.dumps({"bank": str(path), "removed": bank.remove(path, args.args[0])}, ensure_ascii=False))
    elif args.action == "import":
        source = Path(args.args[0])
        try:
            lines = source.read_text(encoding="utf-8").splitlines()
            items = [json.loads(line) for line in lines if line.strip()]
        except (OSError, ValueError) as e:
            raise MadoguchiError(f"cannot import {source}: {e}") from None
        counts = bank.add(path, items, keys, source="import", by=args.by)
        print(json.dumps({"bank": str(path), **counts}, ensure_ascii=False))
    else:
        entries = bank.read(path, keys)
        if args.action == "export" or args.json:
            sys.stdout.write(bank.dumps(entries))
        else:
            for e in entries:
                print(f"{e.key:8} {e.question}" + (f"  ({e.by})" if e.by else ""))


BENCHES = {  # name → (script, its result file in bench/results/, arguments)
    "search": ("bench/search.py", "search.json", []),
    "http": ("bench/http_load.py", "http_load.json", []),
    "faiss": ("bench/faiss_scale.py", "faiss_scale.json", ["--quick"]),
    "replicas": ("bench/replicas.py", "replicas.json", []),  # needs nginx and PostgreSQL's server
}


def cmd_bench(args) -> None:
    """Each benchmark runs in its own process, so no figure pays for another's imports."""
    import subprocess

    from chatbot.errors import MadoguchiError

    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in BENCHES]
    if unknown:
        raise MadoguchiError(f"unknown benchmark {unknown}; choose from {', '.join(BENCHES)}")
    combined = {}
    for name in chosen:
        script, filename, extra = BENCHES[name]
        if name == "faiss" and args.full:
            extra = []
        result = config.REPO / "bench" / "results" / filename
        print(f"running {script} {' '.join(extra)}…", file=sys.stderr)
        done = subprocess.run([sys.executable, str(config.REPO / script), *extra, "--json", str(result)],
                              cwd=config.REPO, stdout=sys.stderr if args.json else None)
        if done.returncode != 0:
            raise MadoguchiError(f"{script} failed (exit {done.returncode})")
        combined[name] = json.loads(result.read_text(encoding="utf-8"))
    print(json.dumps(combined, ensure_ascii=False, indent=1))


def cmd_db(args) -> None:
    """The log's database, for operators; see chatbot/store/log.py for what a spool is."""
    from chatbot import store
    from chatbot.errors import StoreError

    data = config.data_dir()
    with log_database(args) as backend:
        out: dict = {"store": backend.label}
        if args.action == "status":
            out.update(schema=backend.version(), **backend.count())
            out["spools"] = {p.name: sum(1 for _ in p.open("rb")) for p in sorted(data.glob("spool-*.jsonl"))
                             if p.stat().st_size} if data.is_dir() else {}
        elif args.action == "migrate":
            found, now = backend.migrate()
            out.update(schema_before=found, schema=now)
        elif args.action == "flush":
            out["flushed"], out["skipped"] = {}, {}
            for path in sorted(data.glob("spool-*.jsonl")) if data.is_dir() else []:
                if not path.stat().st_size:
                    continue
                try:
                    log = store.Log(backend, data, path.stem.removeprefix("spool-"))
                except StoreError as e:  # a running desk writes its own spool
                    out["skipped"][path.name] = str(e)
                    continue
                if log.spool_error:  # it could not even open the spool: nothing was read from it
                    log.close(0)
                    raise StoreError(f"cannot read {path}: {log.spool_error}")
                done = log.flush(60)
                out["flushed"][path.name] = {"written": log.written, "rejected": log.rejected, "complete": done}
                log.close(0)
                if not done:
                    raise StoreError(f"{path} is not fully written: {log.last_error}")
            out.update(backend.count())
        elif args.action == "prune":
            days = _days(args.older_than)
            out.update(older_than_days=days, deleted=backend.prune(datetime.now(timezone.utc) - timedelta(days=days)),
                       **backend.count())
        elif args.action == "clear":
            if not args.yes:
                raise StoreError(f"this deletes every question and feedback in {backend.label}; add --yes to do it")
            before = backend.count()
            backend.clear()
            out.update(deleted=before, **backend.count())
    if args.json:
        print(json.dumps(out, ensure_ascii=False))
        return
    for k, v in out.items():
        print(f"{k}: {v}")


@contextmanager
def log_database(args):
    """The log's database for a command (--db, --data-dir): "not available" becomes a one-line
    error naming it; closed afterwards."""
    from chatbot import store
    from chatbot.errors import StoreError

    backend = store.open_backend(config.db_url(), config.data_dir())
    try:
        yield backend
    except store.Unavailable as e:
        raise StoreError(f"{backend.label}: {e}") from None
    finally:
        getattr(backend, "close", lambda: None)()


def _days(age: str | None) -> int:
    """'90d' → 90, '12w' → 84."""
    from chatbot.errors import StoreError

    m = re.fullmatch(r"([0-9]{1,5})([dw])", (age or "").strip())
    if not m:
        raise StoreError(f"--older-than wants an age such as 90d or 12w, got {age!r}")
    return int(m.group(1)) * (7 if m.group(2) == "w" else 1)


def cmd_staff(args) -> None:
    """Console accounts; passwords are asked for (or read from stdin), never taken as arguments."""
    import getpass

    from chatbot import staff
    from chatbot.errors import StoreError

    if args.action != "list" and not args.name:
        raise StoreError(f"staff {args.action} needs a name: python -m chatbot staff {args.action} NAME")
    with log_database(args) as backend:
        backend.migrate()
        accounts = staff.Accounts(backend)
        if args.action == "add":
            if args.password_stdin:
                password = sys.stdin.readline().rstrip("\r\n")
            else:
                password = getpass.getpass(f"password for {args.name}: ")
                if getpass.getpass("again: ") != password:
                    raise StoreError("the two passwords differ; nothing changed")
            accounts.add(args.name, password)
            out = {"added": args.name, "store": backend.label}
        elif args.action == "remove":
            if not accounts.remove(args.name):
                raise StoreError(f"no staff account {args.name!r} in {backend.label}")
            out = {"removed": args.name, "store": backend.label}
        else:
            out = {"accounts": accounts.list(), "store": backend.label}
    if args.json:
        print(json.dumps(out, ensure_ascii=False))
    elif args.action == "list":
        for a in out["accounts"]:
            print(f"{a['name']}\tsince {a['created_at']}" + ("\tLOCKED" if a["locked"] else ""))
    else:
        print(f"{args.action}{'ed' if args.action == 'add' else 'd'}: {args.name} ({backend.label})")
