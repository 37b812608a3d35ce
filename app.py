"""The desk: `python app.py [--host 127.0.0.1] [--port 7860] [--data-dir DIR] [--db URL] [--replica NAME]`.

Loads the index (building it first, with progress on the console, when it is missing or stale),
then serves the visitor chat with the /search and /feedback APIs at /, and the staff console at
/staff behind a login (chatbot/desk/web.py; accounts: `python -m chatbot staff add NAME`). The start
path stays lean: the ONNX encoder needs neither torch nor sentence-transformers; only a build
imports them. Many desks can share one PostgreSQL log (--db): see README "Running many desks".
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# Before gradio is imported: it reads this once.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
# Gradio's queue keeps a record of every event for its monitoring page, up to 10,000 by default:
# several KB each, which showed as the desk's memory creeping under load (issue 8). The page is
# off here, so keep only the last few.
os.environ["GRADIO_ANALYTICS_MAX_EVENTS"] = "100"

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
CONCURRENCY = 4  # events of one kind running at once; searches themselves take turns (service.Desk)
QUEUE_SIZE = 64  # waiting events beyond this are refused rather than piling up


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python app.py", description="madoguchi 相談窓口 (the desk)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--data-dir", type=Path,
                        help="the log's spool and SQLite file (default: $MADOGUCHI_DATA or ./data)")
    parser.add_argument("--db", metavar="URL", help="the log's database: sqlite:///PATH or postgresql://USER@HOST/DB "
                        "(default: $MADOGUCHI_DB, else SQLite in the data directory)")
    parser.add_argument("--replica", metavar="NAME", help="this desk's name in a shared log "
                        "(default: $MADOGUCHI_REPLICA, else <hostname>-<port>)")
    return parser.parse_args(argv)


def open_searcher():
    """The search engine over the current index; builds the index first if it must."""
    from chatbot import config, embed, index, search
    from chatbot.errors import IndexStateError

    encoder = embed.load_encoder(config.model_name())
    try:
        built = index.load(config.index_dir(), corpus_dir=config.corpus_dir(), model_id=encoder.model_id)
    except IndexStateError as e:
        print(f"madoguchi: {e}\nmadoguchi: building the index in {config.index_dir()} (about half a minute)…",
              file=sys.stderr, flush=True)
        builder = embed.load_encoder(config.model_name(), runtime="sentence-transformers")
        # reuse_current: a desk started alongside may have built it while this one waited for the lock
        built = index.build(config.corpus_dir(), config.index_dir(), builder, progress=True, reuse_current=True)
    return search.Searcher(built, encoder, bank_file=config.bank_file())


def create_app(data_dir: Path | None = None, db: str | None = None, replica: str | None = None,
               port: int | None = None):
    """(visitor Blocks, staff Blocks or None when no staff account exists, Desk): everything but
    the server. The replica name defaults to $MADOGUCHI_REPLICA, else <hostname>-<port>."""
    from chatbot import config, corpus, store
    from chatbot.desk import service, ui

    log = store.open_store(config.db_url() if db is None else db, data_dir or config.data_dir(),
                           replica or config.replica() or store.default_replica(port))
    try:
        desk = service.Desk(open_searcher(), corpus.load(config.corpus_dir()), log)
        log.wait_ready(5)  # the schema (and its staff_accounts table) is migrated by the log's writer
        try:
            console = ui.build_staff(desk) if desk.accounts.any() else None
        except store.Unavailable:
            console = None  # no database, no login: the console stays off
    except BaseException:
        log.close(0)
        raise
    return ui.build(desk), console, desk


def main(argv=None) -> None:
    import threading

    import uvicorn

    from chatbot import config
    from chatbot.desk import web
    from chatbot.errors import MadoguchiError

    started = time.perf_counter()
    args = parse_args(argv)
    os.umask(0o077)  # the log, spool and bank hold what visitors typed: files 0600, folders 0700
    if args.host not in LOCAL_HOSTS:
        print(f"madoguchi: WARNING: listening on {args.host}: anyone who can reach this machine can use the desk "
              "(the staff console at /staff asks for a login). Use the default 127.0.0.1 unless that is intended.",
              file=sys.stderr, flush=True)
    try:
        retention, rate = config.retention_days(), config.rate_limit()
        visitor, console, desk = create_app(args.data_dir, args.db, args.replica, args.port)
    except MadoguchiError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    log = desk.store
    if log.wait_ready(5):
        print(f"madoguchi: log → {log.backend.label} (schema {log.schema[1]}, replica {log.replica})", flush=True)
    else:
        print(f"madoguchi: WARNING: the log's database is not available ({log.last_error or 'no answer yet'}); "
              f"the desk answers anyway and keeps records in {log.spool_path} until it is", file=sys.stderr, flush=True)
    if console is None:
        print("madoguchi: the staff console is off: no staff account "
              "(create one with `python -m chatbot staff add NAME`, then restart)", flush=True)
    for blocks in (visitor, console):
        if blocks is not None:
            blocks.queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_SIZE)
    app = web.create(visitor, console, desk.accounts, theme="default", css=_css(), rate=rate)
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning",
                                           access_log=False, server_header=False, timeout_graceful_shutdown=5))

    def announce():
        while not server.started and not server.should_exit:
            time.sleep(0.05)
        if server.started:
            print(f"madoguchi: ready at http://{args.host}:{args.port} in {time.perf_counter() - started:.1f} s "
                  f"(log: {log.backend.label}; staff console: {'/staff' if console else 'off'})", flush=True)

    threading.Thread(target=announce, daemon=True).start()
    if retention:
        threading.Thread(target=prune_daily, args=(log, retention, server), daemon=True).start()
    try:
        server.run()  # SIGTERM (systemd) and Ctrl-C end it gracefully
    finally:
        log.close(5)  # what is not written by then stays in the spool for the next start
    if not server.started:
        sys.exit(1)  # the port was taken, say


def prune_daily(log, days: int, server) -> None:
    """The retention period (MADOGUCHI_RETENTION_DAYS): at start, then once a day."""
    while not server.should_exit:
        try:
            gone = log.prune(days)
            if any(gone.values()):
                print(f"madoguchi: deleted log records older than {days} days: {gone}", flush=True)
        except Exception as e:  # noqa: BLE001 - the database away, or anything else: say so, try tomorrow
            print(f"madoguchi: WARNING: could not prune the log: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        for _ in range(24 * 3600):
            if server.should_exit:
                return
            time.sleep(1)


def _css() -> str:
    from chatbot.desk.ui import CSS

    return CSS


if __name__ == "__main__":
    main()
