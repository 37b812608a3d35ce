"""The desk: `python app.py [--host 127.0.0.1] [--port 7860] [--workers N] …` (`--help` lists all;
each flag also has an environment variable, chatbot/config.py).

Loads the index (building it first, with progress on the console, when it is missing or stale),
then serves the visitor chat with the pinned Gradio /search and /feedback at /, the JSON API at
/api (docs at /api/docs), and the staff console at /staff behind a login (chatbot/desk/web.py;
accounts: `python -m chatbot staff add NAME`). The start
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
CONCURRENCY = 4  # Gradio events of one kind at once; their searches share the Desk's workers
QUEUE_SIZE = 64  # waiting Gradio events beyond this are refused rather than piling up


def parse_args(argv=None) -> argparse.Namespace:
    """Every setting, resolved (flag, else environment, else default: chatbot/config.py)."""
    from chatbot import config

    parser = argparse.ArgumentParser(prog="python app.py", parents=[config.parser(desk=True)],
                                     description="madoguchi 相談窓口 (the desk)")
    config.use(parser.parse_args(argv))
    return argparse.Namespace(**{s.name: config.get(s.name) for s in config.SETTINGS})


def create_app(settings: argparse.Namespace):
    """(visitor Blocks, staff Blocks or None when no staff account exists, Desk): everything but
    the server."""
    from chatbot import config, corpus, search, store
    from chatbot.desk import service, ui

    log = store.open_store(settings.db, settings.data_dir, settings.replica or store.default_replica(settings.port))
    try:
        # One ONNX thread per search: the desk runs `workers` of them at once (service.Pool).
        searcher = search.open_searcher(build_if_stale=True, threads=1)
        desk = service.Desk(searcher, corpus.load(config.corpus_dir()), log, workers=settings.workers,
                            waiting=settings.queue)
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

    from chatbot.desk import web
    from chatbot.errors import MadoguchiError

    started = time.perf_counter()
    os.umask(0o077)  # the log, spool and bank hold what visitors typed: files 0600, folders 0700
    try:
        args = parse_args(argv)
        if args.host not in LOCAL_HOSTS:
            print(f"madoguchi: WARNING: listening on {args.host}: anyone who can reach this machine can use the "
                  "desk (the staff console at /staff asks for a login). Use the default 127.0.0.1 unless that is "
                  "intended.", file=sys.stderr, flush=True)
        visitor, console, desk = create_app(args)
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
    app = web.create(visitor, console, desk, theme="default", css=_css(), rate=args.rate_limit)
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning",
                                           access_log=False, server_header=False, timeout_graceful_shutdown=5))

    def announce():
        while not server.started and not server.should_exit:
            time.sleep(0.05)
        if server.started:
            print(f"madoguchi: ready at http://{args.host}:{args.port} in {time.perf_counter() - started:.1f} s "
                  f"(log: {log.backend.label}; staff console: {'/staff' if console else 'off'})", flush=True)

    threading.Thread(target=announce, daemon=True).start()
    if args.retention_days:
        threading.Thread(target=prune_daily, args=(log, args.retention_days, server), daemon=True).start()
    try:
        server.run()  # SIGTERM (systemd) and Ctrl-C end it gracefully
    finally:
        desk.pool.close()
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
