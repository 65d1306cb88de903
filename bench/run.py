"""Benchmark: exactly-once pipeline vs plain at-least-once Celery vs raw AMQP, in one run.

Usage (from the repository root; ``make bench`` runs it)::

    .venv/bin/python -m bench.run [--trades N] [--workers W] [--concurrency C] [--repeats R]
                                  [--http-workers G] [--http-connections K] [--http-trades H]
                                  [--no-http] [--no-alternatives] [--alternatives NAME ...]
                                  [--legs LEG ...]

Each repeat runs these legs one after the other on the same machine (``bench/legs/``, one module
each, whose docstring says what it measures): ``placement`` (one placed trade's CPU alone),
``exactly_once`` (the pipeline end to end, one trade per call), ``batched_placement`` (the same,
``--placement-batch`` trades per call), ``http`` (the pipeline through the web tier, one trade per
``POST /api/trades/``), ``alternatives`` (best-practice Celery, django-celery-outbox and a no-op
view through the same web tier), ``baseline`` (plain Celery) and ``raw_amqp`` (the broker alone).
After the repeats: ``metrics_scrape`` (``/metrics`` at 1k vs ``--metrics-scrape-rows``) and
``history`` (the daily pages at 10k vs ``--history-rows``), each on a database of its own.
``--legs`` runs some of them only (the ``--no-...`` options and a 0 for a leg's size skip one too).

Isolation (``bench/common.py``): a fresh database ``beans_bench``, a private RabbitMQ vhost
``bench`` and Redis database 12, passed to every subprocess; the developer's other
DJANGO_/CELERY_/RELIABILITY_/TRADES_ variables are cleared, so the project runs at its defaults.
The vhost is deleted at the end, whatever happens; the database is kept for inspection. Worker
and beat logs: ``.run/bench/``. Results: ``bench/results/latest.json`` (``bench/report.py``).
"""

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import (
    ACCOUNTS,
    REPO,
    RUN_DIR,
    VHOST,
    Children,
    bench_env,
    database_create,
    log,
    vhost_create,
    vhost_delete,
)
from bench.legs import (
    LEGS,
    alternatives,
    baseline,
    batched_placement,
    exactly_once,
    history,
    http,
    metrics_scrape,
    placement,
    raw_amqp,
)
from bench.legs.alternatives import ALTERNATIVES
from bench.report import Repeat, report, results_write, summarize
from bench.web import HTTP_TRADES_DEFAULT_MAX, http_client, web_start
from harness.environment import foreign


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--trades", type=int, default=3000, help="trades (and baseline messages) per repeat")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (W)")
    parser.add_argument("--concurrency", type=int, default=2, help="prefork children per worker (C)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats; medians are reported")
    parser.add_argument("--producers", type=int, default=2, help="producer processes in the bench")
    parser.add_argument("--raw-messages", type=int, default=10000, help="messages of the raw AMQP round trip")
    parser.add_argument("--no-raw", action="store_true", help="skip the raw AMQP measurement")
    parser.add_argument(
        "--placement-trades",
        type=int,
        default=1000,
        help="trades of the placement-alone measurement (its CPU bounds the throughput; 0: skip)",
    )
    parser.add_argument(
        "--placement-batch",
        type=int,
        default=50,
        help="also run the pipeline with trades placed this many per call (trades_place_many; 0: skip)",
    )
    parser.add_argument(
        "--batched-trades",
        type=int,
        default=15000,
        help="trades of the batched-placement run (it is several times faster: more trades, a longer "
        "window; 0: none)",
    )
    parser.add_argument(
        "--paced-trades",
        type=int,
        default=600,
        help="trades of the paced latency run after each throughput run (0: none)",
    )
    parser.add_argument(
        "--paced-share", type=float, default=0.5, help="paced rate as a share of the measured throughput"
    )
    parser.add_argument(
        "--timeout", type=float, help="bound of every wait, in seconds (default: max(300, N / 2))"
    )
    parser.add_argument("--no-http", action="store_true", help="skip the HTTP leg (POST /api/trades/)")
    parser.add_argument(
        "--http-workers",
        type=int,
        default=2,
        help="gunicorn worker processes of the HTTP leg (WEB_CONCURRENCY)",
    )
    parser.add_argument(
        "--http-threads",
        type=int,
        default=1,
        help="threads per gunicorn worker (WEB_THREADS; 1: the sync worker, which closes every connection)",
    )
    parser.add_argument(
        "--http-connections",
        type=int,
        default=32,
        help=f"concurrent clients of the HTTP leg, one request at a time each (at most {ACCOUNTS})",
    )
    parser.add_argument(
        "--http-client",
        choices=["auto", "wrk", "python"],
        default="auto",
        help="load generator: wrk (installed with apt-get when missing, as root), Python, or auto: "
        "wrk when it can be had",
    )
    parser.add_argument(
        "--http-trades",
        type=int,
        help="requests (one trade each) of every HTTP leg, the exactly-once one and each alternative "
        f"(default: --trades, at most {HTTP_TRADES_DEFAULT_MAX}: the HTTP legs are the slowest)",
    )
    parser.add_argument(
        "--http-paced-trades",
        type=int,
        default=1000,
        help="requests of the paced latency run after each exactly-once HTTP run, at --paced-share "
        "of its throughput (0: none)",
    )
    parser.add_argument(
        "--no-alternatives",
        action="store_true",
        help="skip the alternatives through HTTP (best-practice Celery, django-celery-outbox, no-op view)",
    )
    parser.add_argument(
        "--alternatives",
        nargs="+",
        choices=list(ALTERNATIVES),
        default=list(ALTERNATIVES),
        metavar="NAME",
        help=f"which alternatives to run after the exactly-once HTTP leg, always in this order: "
        f"{', '.join(ALTERNATIVES)} (default: all)",
    )
    parser.add_argument(
        "--celery-db-reuse-max",
        type=int,
        default=0,
        help="CELERY_DB_REUSE_MAX for every Celery worker of the HTTP legs (bench.settings): Celery "
        "closes the database connections around every task unless it is set (0, the default: "
        "Celery's default, a new connection per task)",
    )
    parser.add_argument(
        "--metrics-scrape-rows",
        type=int,
        default=1_000_000,
        help="time a /metrics scrape with this many message-log rows against one with 1,000 "
        "(bench/legs/metrics_scrape.py, a database of its own; 0: skip)",
    )
    parser.add_argument("--metrics-scrapes", type=int, default=40, help="timed scrapes per size (median)")
    parser.add_argument(
        "--history-rows",
        type=int,
        default=10_000_000,
        help="time the daily pages and commands (admin lists, health page, /metrics, pipeline_status, a "
        "reconciler pass) with this many message-log rows against 10,000 (bench/legs/history.py, a database of "
        "its own, bench/results/history.json; 0: skip)",
    )
    parser.add_argument(
        "--history-rounds", type=int, default=15, help="timed calls per page and size (median)"
    )
    parser.add_argument(
        "--housekeeping-worker",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the library's periodic tasks on a worker of their own (-Q housekeeping -c 1; the "
        "others -X housekeeping), as the README's layouts do (default: on)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="py-spy the exactly-once HTTP leg's gunicorn, worker and beat into DIR/<repeat>/ "
        "(collapsed stacks and a summary per process kind; the profiler costs CPU, so read "
        "where the time goes, not the figures, from such a run)",
    )
    parser.add_argument("--loglevel", default="warning", help="log level of the Celery workers and beat")
    parser.add_argument(
        "--legs",
        nargs="+",
        choices=LEGS,
        default=list(LEGS),
        metavar="LEG",
        help=f"run these legs only, always in this order: {', '.join(LEGS)} (default: all; a leg's "
        "--no-... option, or 0 for its size, leaves it out too)",
    )
    args = parser.parse_args(argv)
    if args.http_trades is None:
        args.http_trades = min(args.trades, HTTP_TRADES_DEFAULT_MAX)
    if args.no_alternatives or args.no_http:
        args.alternatives = []
    else:
        args.alternatives = [name for name in ALTERNATIVES if name in args.alternatives]
    if args.timeout is None:
        args.timeout = max(300.0, args.trades / 2, args.http_trades / 2)
    if not 0 <= args.placement_batch <= 100:
        parser.error("--placement-batch must be from 0 to 100 (TRADES_BATCH_MAX at its default)")
    if args.paced_trades < 0 or args.http_paced_trades < 0 or not 0 < args.paced_share <= 1:
        parser.error("--paced-trades must be >= 0 and --paced-share in (0, 1]")
    if not 0 < args.http_connections <= ACCOUNTS:
        parser.error(f"--http-connections must be from 1 to {ACCOUNTS} (one account in flight per client)")
    for name in (
        "trades",
        "workers",
        "concurrency",
        "repeats",
        "producers",
        "raw_messages",
        "http_workers",
        "http_threads",
        "http_trades",
    ):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    legs_select(args)
    return args


def legs_select(args: argparse.Namespace) -> None:
    """Make ``--legs`` and the options that leave a leg out agree: ``args.legs`` is what will run.

    A leg left out of ``--legs`` gets its option's "skip" value (so the results' ``params`` say it
    did not run); a leg an option skips leaves ``args.legs``.
    """
    chosen = set(args.legs)
    if "placement" not in chosen:
        args.placement_trades = 0
    if "batched_placement" not in chosen:
        args.batched_trades = 0
    if "alternatives" not in chosen:
        args.alternatives = []
    if "http" not in chosen and not args.alternatives:
        args.no_http = True
    if "raw_amqp" not in chosen:
        args.no_raw = True
    if "metrics_scrape" not in chosen:
        args.metrics_scrape_rows = 0
    if "history" not in chosen:
        args.history_rows = 0
    skipped = {
        "placement": not args.placement_trades,
        "batched_placement": args.placement_batch <= 1 or not args.batched_trades,
        "http": args.no_http,
        "alternatives": not args.alternatives,
        "raw_amqp": args.no_raw,
        "metrics_scrape": not args.metrics_scrape_rows,
        "history": not args.history_rows,
    }
    args.legs = [leg for leg in LEGS if leg in chosen and not skipped.get(leg, False)]


def repeat_run(args: argparse.Namespace, children: Children, r: int, wrk: str | None, client: str) -> Repeat:
    """Run the repeat's legs in order; each logs its figures."""
    tag = f"r{r}"
    repeat = Repeat()

    def step(what: str) -> None:
        log(f"repeat {r}/{args.repeats}: {what}")

    if "placement" in args.legs:
        step(f"placement alone, {args.placement_trades} trades")
        repeat.placement = placement.measure(args.placement_trades)
    if "exactly_once" in args.legs:
        step(f"exactly-once, {args.trades} trades")
        repeat.exactly_once = exactly_once.measure(args, children, tag)
    if "batched_placement" in args.legs:
        step(f"exactly-once, {args.batched_trades} trades placed {args.placement_batch} per call")
        repeat.exactly_once_batched = batched_placement.measure(args, children, tag)
    if "http" in args.legs or "alternatives" in args.legs:
        server = web_start(args, children, tag)
        try:
            if "http" in args.legs:
                step(
                    f"exactly-once through HTTP, {args.http_trades} requests POST /api/trades/ "
                    f"({args.http_connections} clients, {client}; gunicorn "
                    f"{args.http_workers} x {args.http_threads})"
                )
                repeat.http = http.measure(args, children, tag, server, wrk, client)
            for name in args.alternatives:
                leg = ALTERNATIVES[name]
                step(f"{name} through HTTP, {args.http_trades} requests POST {leg.path} ({leg.what})")
                repeat.alternatives[name] = alternatives.measure(
                    args, children, tag, name, server, wrk, client
                )
        finally:
            children.stop(server.web.child)
    if "baseline" in args.legs:
        step(f"baseline, {args.trades} messages")
        repeat.baseline = baseline.measure(args, children, tag)
    if "raw_amqp" in args.legs:
        step(f"raw AMQP, {args.raw_messages} messages")
        repeat.raw_amqp = raw_amqp.measure(args)
    return repeat


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    for stale in {*RUN_DIR.glob("*.log"), *RUN_DIR.glob("beat-schedule-*"), *RUN_DIR.glob("load-*")}:
        stale.unlink(missing_ok=True)  # logs and load results of the previous run
    os.chdir(REPO)
    # Settings read the environment once: it must be ours before django.setup().
    for key in [key for key in os.environ if foreign(key)]:
        del os.environ[key]
    os.environ.update(bench_env())
    # Read by bench.settings only (the HTTP legs' processes), inherited by every subprocess.
    os.environ["BENCH_CELERY_DB_REUSE_MAX"] = str(max(args.celery_db_reuse_max, 0))

    def on_sigterm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_sigterm)
    # Even when started in the background by a shell that ignores SIGINT.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    children = Children()
    vhost_made = False
    started = time.monotonic()
    try:
        log(f"setting up vhost {VHOST!r}")
        vhost_made = True
        vhost_create()
        database_create()
        import django

        django.setup()
        # Imported once here, before any fork: the producers share one version of the code
        # (and an import error shows now, not in the middle of a measurement).
        import bench.baseline  # noqa: F401
        import trades.services  # noqa: F401

        wrk, client = (None, "") if args.no_http else http_client(args.http_client)
        repeats = [repeat_run(args, children, r, wrk, client) for r in range(1, args.repeats + 1)]
        summary = summarize(args, repeats)
        if "metrics_scrape" in args.legs:
            log(f"/metrics scrape: 1000 and {args.metrics_scrape_rows} message-log rows")
            summary.update(
                metrics_scrape.measure_for_run(args.metrics_scrape_rows, scrapes=args.metrics_scrapes)
            )
        if "history" in args.legs:
            log(f"history: the daily pages and commands at 10,000 and {args.history_rows:,} message-log rows")
            summary.update(history.measure_for_run(args.history_rows, rounds=args.history_rounds))
        summary["elapsed_s"] = time.monotonic() - started
        results_write(summary)
        report(summary)
        return 0
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        return 130
    finally:
        # A second Ctrl-C must not cut the cleanup short (every step of it is bounded).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        children.stop_all()
        if vhost_made:
            vhost_delete()
        log(f"done in {time.monotonic() - started:.0f}s; worker logs in {RUN_DIR.relative_to(REPO)}/")


if __name__ == "__main__":
    sys.exit(main())
