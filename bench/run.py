"""Benchmark: exactly-once pipeline vs plain at-least-once Celery vs raw AMQP, in one run.

Usage (from the repository root; ``make bench`` runs it)::

    .venv/bin/python bench/run.py [--trades N] [--workers W] [--concurrency C] [--repeats R]
                                  [--http-workers G] [--http-connections K] [--no-http]

Each repeat measures, one after the other on the same machine:

* **exactly-once**: ``producers`` processes place N trades through
  ``trades.services.trade_place`` while W ``celery -A project worker -c C`` and one
  ``celery -A project beat`` run; the clock runs from the first placement until the
  database shows every trade settled (outcome recorded). Latencies come from the
  database: Trade.created_at to the deduction's LedgerEntry.created_at, and to
  Trade.settled_at.
* **exactly-once, batched placement**: the same, with each producer call placing
  ``--placement-batch`` trades at once (``trades_place_many``, one transaction), to
  measure what the one-trade placement transaction costs the pipeline.
* **exactly-once through HTTP**: the same workers and beat, plus the web tier as operators
  run it (``chaos.harness.WebTier``: gunicorn with ``project/gunicorn.conf.py``,
  ``--http-workers`` processes x ``--http-threads``) and an API key of the bench's own;
  ``--http-connections`` clients (wrk, else a Python client: ``bench/httpload.py`` says why)
  each send ``POST /api/trades/``, one trade per request and one request at a time, N
  requests in all over the bench's accounts. The clock runs from the first request until
  the database shows every trade settled; request latency is the client's, request ->
  deducted comes from the database as above. Any answer but 201 fails the bench.
* **baseline**: the same producers send N plain ``apply_async`` messages (no outbox,
  no confirms) to W ``celery -A bench.baseline worker -c C`` whose task runs one
  conditional UPDATE; the clock stops when the balances show all N applied.
* **raw AMQP**: persistent publishes with batched confirms to a quorum queue,
  consumed with one manual ack per message by W processes; no Celery, no database.

Isolation: a fresh database ``beans_bench``, a private RabbitMQ vhost ``bench`` and
Redis database 12 (snowflake worker-id leases), passed to every subprocess through
DATABASE_URL, CELERY_BROKER_URL and RELIABILITY_REDIS_URL; the developer's other
DJANGO_/CELERY_/RELIABILITY_/TRADES_ variables are cleared, so the project runs at its
defaults. The vhost is deleted at the end, whatever happens; the database is kept
for inspection. Worker and beat logs: ``.run/bench/``.
"""

import argparse
import json
import multiprocessing as mp
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import cpu  # noqa: E402 - needs the repository on sys.path
from bench.httpload import LoadResult, LoadSpec  # noqa: E402
from chaos.harness import Child, WebTier, _foreign, isolated_env, scalar  # noqa: E402 - one harness for the bench and the chaos run
from chaos.harness import wait_for as poll_until  # noqa: E402
from project.broker_admin import BrokerAdminError, broker_admin  # noqa: E402
from project.environment import broker_url, broker_user, database_recreate, database_url  # noqa: E402

RUN_DIR = REPO / ".run" / "bench"
RESULTS = REPO / "bench" / "results" / "latest.json"
DB_NAME = "beans_bench"
VHOST = "bench"
# On the servers of your DATABASE_URL and CELERY_BROKER_URL if you set them, else the defaults.
DATABASE_URL = database_url(DB_NAME)
BROKER_URL = broker_url(VHOST)
REDIS_URL = "redis://127.0.0.1:6379/12"
ACCOUNTS = 64
OPENING_BALANCE = 10**15
BEANS = 1
POLL_S = 0.02

# Queues the bench may declare or leave messages in; deleted before each measurement.
QUEUES = ["beans", "trades", "housekeeping", "dead-letters", "bench-baseline", "bench-raw"]


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def bench_env() -> dict[str, str]:
    """The environment of the bench process and of every subprocess it starts."""
    # Snowflake worker-id leases: a Redis database of the bench's own (tests use 13 and 15,
    # bench/ids.py 14), never the developer's database 0.
    return isolated_env(database_url=DATABASE_URL, broker_url=BROKER_URL, redis_url=REDIS_URL)


def run(*argv: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv), check=check, capture_output=True, text=True, timeout=timeout, env=bench_env(), cwd=REPO
    )


# --------------------------------------------------------------------------- processes


class Children:
    """Every subprocess started, so the ``finally`` can stop them all."""

    def __init__(self) -> None:
        self.running: list[Child] = []

    def start(self, name: str, argv: list[str], *, env: dict[str, str] | None = None) -> Child:
        """Start ``argv`` with the bench's environment (and ``env`` on top), logging to ``name``.log."""
        child = Child(name, argv, env={**bench_env(), **(env or {})}, log_path=RUN_DIR / f"{name}.log")
        self.running.append(child)
        return child.start()

    def adopt(self, child: Child) -> Child:
        """Stop ``child`` too (one started by someone else, e.g. ``WebTier``), even on failure."""
        self.running.append(child)
        return child

    def stop(self, *stopping: Child) -> None:
        for child in stopping:
            self.running.remove(child)
            child.stop()

    def stop_all(self) -> None:
        while self.running:
            self.running.pop().stop()


def celery_argv(app: str, kind: str, *extra: str, loglevel: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", app, kind, "-l", loglevel, *extra]


def wait_for(predicate: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.1) -> None:
    if not poll_until(predicate, timeout=timeout, interval=interval):
        raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


# --------------------------------------------------------------------------- broker


def broker() -> Any:
    from bench.rawamqp import Broker

    node = urlsplit(BROKER_URL)
    return Broker(
        host=f"{node.hostname}:{node.port or 5672}",
        userid=unquote(node.username or "guest"),
        password=unquote(node.password or "guest"),
        virtual_host=VHOST,
    )


def consumer_counts(names: list[str]) -> dict[str, int]:
    """Return the consumer count of each queue (0 when it does not exist yet)."""
    import amqp

    counts: dict[str, int] = {}
    connection = broker().connect()
    try:
        channel = connection.channel()
        for name in names:
            try:
                counts[name] = channel.queue_declare(name, passive=True).consumer_count
            except amqp.exceptions.NotFound:
                counts[name] = 0
                channel = connection.channel()
    finally:
        connection.close()
    return counts


def queues_reset() -> dict[str, int]:
    """Delete the bench's queues in the bench vhost; return the messages that were left in each.

    Deleted, not purged: each measurement declares them afresh, with the arguments of the
    code as it is now (a queue declared by an earlier version would refuse a redeclare).
    """
    import amqp

    left: dict[str, int] = {}
    connection = broker().connect()
    try:
        channel = connection.channel()
        for name in QUEUES:
            try:
                n = channel.queue_delete(name)
            except amqp.exceptions.NotFound:
                channel = connection.channel()
                continue
            if n:
                left[name] = n
    finally:
        connection.close()
    return left


def check_alive(children: list[Child]) -> None:
    for child in children:
        if not child.alive():
            raise RuntimeError(f"{child.name} exited:\n{child.tail()}")


def wait_consumers(queues: list[str], workers: int, children: list[Child], *, timeout: float = 90) -> None:
    def ready() -> bool:
        check_alive(children)
        counts = consumer_counts(queues)
        return all(counts[q] >= workers for q in queues)

    wait_for(ready, timeout=timeout, what=f"{workers} consumer(s) on {', '.join(queues)}", interval=0.3)


# --------------------------------------------------------------------------- database


def database_create() -> None:
    log(f"creating database {DB_NAME} and running migrations")
    database_recreate(DATABASE_URL)
    result = run(sys.executable, "manage.py", "migrate", "--noinput", timeout=300, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"migrate failed:\n{result.stdout}\n{result.stderr}")


def database_reset() -> list[int]:
    """Empty every table of the pipeline's apps and open fresh accounts; return their ids."""
    from django.apps import apps
    from django.db import connection

    from beans.services import account_create

    tables = [
        model._meta.db_table
        for label in ("beans", "trades", "reliability", "django_celery_results")
        for model in apps.get_app_config(label).get_models()
    ]
    existing = set(connection.introspection.table_names())
    tables = [table for table in tables if table in existing]  # a model may not be migrated yet
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")
    ids = [account_create(owner=f"bench-{i}", balance=OPENING_BALANCE).pk for i in range(ACCOUNTS)]
    connection.close()  # nothing of ours may be inherited by the forked producers
    return ids


def scalar_rows(sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(sql, params or [])
        return list(cursor.fetchall())


# --------------------------------------------------------------------------- producers
# Module-level functions: they run in forked producer processes.


def _producer_init() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and terminates us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the parent's handler: terminate() must kill


def _place(accounts: list[int], first: int, size: int, *, batched: bool) -> None:
    """Place trades ``first`` to ``first + size - 1`` (trade i on account i mod len) in one call."""
    from trades.services import trade_place, trades_place_many

    if batched:
        orders = [
            {"account": accounts[i % len(accounts)], "beans": BEANS} for i in range(first, first + size)
        ]
        trades_place_many(orders=orders)
    else:
        trade_place(account_id=accounts[first % len(accounts)], beans=BEANS)


def _place_trades(job: tuple[list[int], int, int]) -> tuple[float, float]:
    """Place ``count`` trades: one per call (``trade_place``) or ``batch`` per call (``trades_place_many``)."""
    accounts, count, batch = job
    started = time.time()
    for first in range(0, count, batch):
        _place(accounts, first, min(batch, count - first), batched=batch > 1)
    return started, time.time()


def _place_trades_paced(job: tuple[list[int], int, int, float]) -> tuple[float, float]:
    """Place trades on a fixed schedule (open loop): the i-th at start + i / rate, ``batch`` per call."""
    accounts, count, batch, rate = job
    started = time.time()
    for first in range(0, count, batch):
        delay = started + first / rate - time.time()
        if delay > 0:
            time.sleep(delay)
        _place(accounts, first, min(batch, count - first), batched=batch > 1)
    return started, time.time()


def _send_baseline(job: tuple[list[int], int]) -> tuple[float, float]:
    from bench.baseline import deduct

    accounts, count = job
    started = time.time()
    for i in range(count):
        deduct.apply_async(args=[accounts[i % len(accounts)], BEANS])
    return started, time.time()


def jobs(accounts: list[int], total: int, producers: int) -> list[tuple[list[int], int]]:
    """Split ``total`` over the producers, each cycling through its own slice of accounts."""
    counts = [total // producers + (1 if p < total % producers else 0) for p in range(producers)]
    return [(accounts[p::producers] or accounts, counts[p]) for p in range(producers)]


@contextmanager
def producer_pool(producers: int) -> Iterator[Any]:
    from django.db import connections

    connections.close_all()
    pool = mp.get_context("fork").Pool(producers, initializer=_producer_init)
    try:
        yield pool
        pool.close()
    finally:
        pool.terminate()
        pool.join()


def produce_and_wait(
    pool: Any,
    fn: Callable[[Any], tuple[float, float]],
    work: list[Any],
    *,
    done: Callable[[], bool],
    timeout: float,
    what: str,
) -> tuple[float, float, float]:
    """Run the producers and poll ``done`` until it holds; return (start, placement end, end)."""
    started = time.time()
    pending = pool.map_async(fn, work)
    deadline = time.monotonic() + timeout
    while not pending.ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"producers did not finish within {timeout:.0f}s ({what})")
        time.sleep(POLL_S)
    spans = pending.get()  # re-raises a producer's exception
    placed = max(end for _, end in spans)
    while not done():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(POLL_S)
    return started, placed, time.time()


# --------------------------------------------------------------------------- measurements


@dataclass
class ExactlyOnce:
    trades: int
    seconds: float
    per_s: float
    placement_per_s: float
    db_seconds: float
    p50_ms: float
    p99_ms: float
    settled_p50_ms: float
    settled_p99_ms: float
    max_ms: float
    deducted: int
    rejected: int
    dead_letters: int
    duplicates_suppressed: int
    relayed_by_sweep: int
    # Outbox row created -> broker confirmed, per consuming task: [p50, p99, max] in ms.
    publish_delay_ms: dict[str, list[float]] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)
    # Sequence gaps the consumers' stream watermarks recorded (out-of-order deliveries); None: no such table.
    gaps_found: int | None = None
    # Latency of a separate run placed at a fixed rate below the throughput (no backlog).
    paced: dict[str, float] = field(default_factory=dict)
    # Messages per consumer transaction and per relay pass, per task: {mean, max}.
    batch_sizes: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class Baseline:
    messages: int
    seconds: float
    per_s: float
    placement_per_s: float
    applied: int
    cpu_s: dict[str, float] = field(default_factory=dict)


@dataclass
class Http:
    """The pipeline through the web tier: ``POST /api/trades/``, one trade per request."""

    trades: int  # placed by the measured requests and deducted
    requests: int  # answered (warm-up not counted)
    statuses: dict[str, int]  # HTTP status -> answers; anything but 201 fails the bench
    non_201: int
    seconds: float  # first request sent -> the database shows every trade settled
    per_s: float  # trades / seconds: placed through HTTP and deducted
    request_per_s: float  # answers a second as the client saw them (first sent -> last answered)
    # POST /api/trades/ as the client sees it (connect, queue, request, answer), in ms.
    request_p50_ms: float
    request_p99_ms: float
    request_max_ms: float
    # Trade.created_at -> the deduction's LedgerEntry.created_at, and -> Trade.settled_at, in ms.
    p50_ms: float
    p99_ms: float
    settled_p50_ms: float
    settled_p99_ms: float
    deducted: int
    rejected: int
    dead_letters: int
    duplicates_suppressed: int
    client: str  # the load generator: "wrk debian/4.1.0-3+b2" (wrk -v) or "python"
    cpu_s: dict[str, float] = field(default_factory=dict)
    batch_sizes: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class Repeat:
    exactly_once: ExactlyOnce
    baseline: Baseline
    raw_amqp: dict[str, float] | None = field(default=None)
    placement: dict[str, float] | None = field(default=None)
    # The same pipeline with trades placed --placement-batch at a time (trades_place_many).
    exactly_once_batched: ExactlyOnce | None = field(default=None)
    # The same pipeline with trades placed through the web tier, one per HTTP request.
    http: Http | None = field(default=None)


def cpu_usage(before: cpu.Snapshot, children: list[Child]) -> dict[str, float]:
    groups = [child.process.pid for child in children if child.process is not None]
    return cpu.attribute(
        before, cpu.snapshot(), celery_groups=groups, bench_pid=os.getpid(), database=DB_NAME
    )


def cpu_line(cpu_s: dict[str, float], items: int) -> str:
    """CPU milliseconds per item by group, and how busy the whole machine was."""
    parts = [
        f"{group} {seconds * 1000 / items:.1f}"
        for group, seconds in cpu_s.items()
        if group != "machine_busy_share"
    ]
    return f"CPU ms/item: {', '.join(parts)}; machine busy {cpu_s.get('machine_busy_share', 0):.0%}"


def percentiles(sql: str, params: list[Any]) -> tuple[float, float, float]:
    from django.db import connection

    select = "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), percentile_cont(0.99) WITHIN GROUP (ORDER BY ms), max(ms)"
    with connection.cursor() as cursor:
        cursor.execute(f"{select} FROM ({sql}) AS s", params)
        p50, p99, top = cursor.fetchone()
    return float(p50 or 0), float(p99 or 0), float(top or 0)


TRADE_TO_DEDUCTED = (
    "SELECT extract(epoch FROM l.created_at - t.created_at) * 1000 AS ms "
    "FROM trades_trade t JOIN beans_ledgerentry l ON l.message_id = t.deduction_message_id "
    "WHERE t.id > %s"
)
TRADE_TO_SETTLED = (
    "SELECT extract(epoch FROM t.settled_at - t.created_at) * 1000 AS ms FROM trades_trade t WHERE t.id > %s"
)


def measure_placement(trades: int) -> dict[str, float]:
    """CPU one placed trade costs by itself: ``trade_place`` in this process, nothing else running.

    Its transaction (trade, stream counter, outbox row) is the part of the pipeline that
    cannot be batched without changing the API: the CPU of this process plus that of its
    PostgreSQL backend, per trade, bounds the end-to-end throughput at
    cpu_count / cost even if relaying and consuming were free.
    """
    from django.db import connection
    from django.test import override_settings

    from trades.services import trade_place

    accounts = database_reset()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]
    tick = os.sysconf("SC_CLK_TCK")

    def backend_cpu() -> float:
        fields = Path(f"/proc/{backend}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick

    with override_settings(RELIABILITY_RELAY_FAST_PATH=False):  # the transaction alone
        for i in range(50):
            trade_place(account_id=accounts[i % len(accounts)], beans=BEANS)
        wall, own, db = time.perf_counter(), time.process_time(), backend_cpu()
        for i in range(trades):
            trade_place(account_id=accounts[i % len(accounts)], beans=BEANS)
        wall, own, db = time.perf_counter() - wall, time.process_time() - own, backend_cpu() - db
    connection.close()
    cost_ms = (own + db) * 1000 / trades
    return {
        "trades": trades,
        "wall_ms": wall * 1000 / trades,
        "python_cpu_ms": own * 1000 / trades,
        "postgres_cpu_ms": db * 1000 / trades,
        "ceiling_per_s": (os.cpu_count() or 1) * 1000 / cost_ms,
    }


def pipeline_start(
    args: argparse.Namespace, children: Children, *, kind: str, name: str, appnames: bool = False
) -> tuple[list[Child], Child]:
    """Start W ``celery -A project worker -c C`` and one beat; return them once every worker consumes.

    Logs ``<kind>-worker<i>-<name>.log`` and ``<kind>-beat-<name>.log``. With ``appnames`` they
    connect to PostgreSQL as ``bench-worker`` and ``bench-beat`` (``backend_names``).
    """
    schedule = RUN_DIR / f"beat-schedule-{name}"
    for path in RUN_DIR.glob(f"beat-schedule-{name}*"):
        path.unlink()
    workers = [
        children.start(
            f"{kind}-worker{i}-{name}",
            celery_argv(
                "project",
                "worker",
                "-n",
                f"bench-{kind}{i}@%h",
                "-c",
                str(args.concurrency),
                "--without-mingle",
                "--without-gossip",
                loglevel=args.loglevel,
            ),
            env={"PGAPPNAME": "bench-worker"} if appnames else None,
        )
        for i in range(1, args.workers + 1)
    ]
    beat = children.start(
        f"{kind}-beat-{name}",
        celery_argv("project", "beat", "--schedule", str(schedule), loglevel=args.loglevel),
        env={"PGAPPNAME": "bench-beat"} if appnames else None,
    )
    wait_consumers(["beans", "trades"], args.workers, [*workers, beat])
    return workers, beat


def pipeline_settled(processes: list[Child]) -> Callable[[], bool]:
    """A predicate: no trade is pending any more (raises if a message was dead-lettered or a process died)."""

    def settled() -> bool:
        pending, dead = scalar_rows(
            "SELECT EXISTS (SELECT 1 FROM trades_trade WHERE status = 'pending'), "
            "(SELECT count(*) FROM reliability_deadletter)"
        )[0]
        if dead:  # a dead-lettered deduction never settles its trade: no point waiting
            detail = scalar(
                "SELECT handler || ': ' || detail FROM reliability_deadletter ORDER BY id LIMIT 1"
            )
            raise RuntimeError(f"{dead} message(s) dead-lettered, e.g. {detail}")
        check_alive(processes)
        return not pending

    return settled


def measure_exactly_once(
    args: argparse.Namespace, children: Children, tag: str, *, total: int, placement_batch: int = 1
) -> ExactlyOnce:
    """The pipeline end to end, ``total`` trades, ``placement_batch`` per placement call (1: ``trade_place``)."""
    from reliability.conf import settings

    def placing(total: int) -> list[tuple[list[int], int, int]]:
        return [(own, n, placement_batch) for own, n in jobs(accounts, total, args.producers)]

    accounts = database_reset()
    queues_reset()
    workers, beat = pipeline_start(
        args, children, kind="eo", name=f"{tag}{'' if placement_batch == 1 else '-batched'}"
    )
    settled = pipeline_settled([*workers, beat])

    with producer_pool(args.producers) as pool:
        # Warm-up: every worker child and producer opens its connections once.
        warm = args.workers * args.concurrency * 4 + args.producers * 4
        produce_and_wait(
            pool,
            _place_trades,
            placing(warm),
            done=settled,
            timeout=args.timeout,
            what="warm-up trades",
        )
        base_id = int(scalar("SELECT coalesce(max(id), 0) FROM trades_trade"))
        cpu_before = cpu.snapshot()
        started, placed, finished = produce_and_wait(
            pool,
            _place_trades,
            placing(total),
            done=settled,
            timeout=args.timeout,
            what=f"{total} trades to settle",
        )
        cpu_s = cpu_usage(cpu_before, [*workers, beat])
        seconds = finished - started
        paced: dict[str, float] = {}
        if args.paced_trades:
            # Latency without a backlog: trades placed at a fixed share of the throughput.
            rate = max(args.paced_share * total / seconds, 1.0)
            # As many trades as the run's share of --trades: the same seconds of pacing at any speed.
            paced_trades = args.paced_trades * total // args.trades
            paced_base = int(scalar("SELECT coalesce(max(id), 0) FROM trades_trade"))
            work = [
                (own, n, placement_batch, rate / args.producers)
                for own, n in jobs(accounts, paced_trades, args.producers)
            ]
            produce_and_wait(
                pool, _place_trades_paced, work, done=settled, timeout=args.timeout, what="paced trades"
            )
            d50, d99, _ = percentiles(TRADE_TO_DEDUCTED, [paced_base])
            t50, t99, _ = percentiles(TRADE_TO_SETTLED, [paced_base])
            paced = {
                "rate_per_s": rate,
                "trades": paced_trades,
                "p50_ms": d50,
                "p99_ms": d99,
                "settled_p50_ms": t50,
                "settled_p99_ms": t99,
            }
    end_id = base_id + total
    between = [base_id, end_id]
    p50, p99, _ = percentiles(TRADE_TO_DEDUCTED + " AND t.id <= %s", between)
    s50, s99, smax = percentiles(TRADE_TO_SETTLED + " AND t.id <= %s", between)
    trades = int(scalar("SELECT count(*) FROM trades_trade WHERE id > %s AND id <= %s", between))
    counts = dict(
        scalar_rows(
            "SELECT status, count(*) FROM trades_trade WHERE id > %s AND id <= %s GROUP BY status", between
        )
    )
    entries = int(
        scalar(
            "SELECT count(*) FROM trades_trade t JOIN beans_ledgerentry l "
            "ON l.message_id = t.deduction_message_id WHERE t.id > %s AND t.id <= %s",
            between,
        )
    )
    db_seconds = float(
        scalar(
            "SELECT extract(epoch FROM max(settled_at) - min(created_at)) FROM trades_trade "
            "WHERE id > %s AND id <= %s",
            between,
        )
    )
    window = [started, finished]
    # A row published later than the fast path's grace period went out through the sweep.
    relayed = int(
        scalar(
            "SELECT count(*) FROM reliability_outboxmessage "
            "WHERE created_at BETWEEN to_timestamp(%s) AND to_timestamp(%s) "
            "AND (sent_at - created_at >= make_interval(secs => %s) OR attempts > 0)",
            [*window, settings.RELIABILITY_RELAY_GRACE_S * 0.9],
        )
    )
    publish_delay = {
        task: list(
            percentiles(
                "SELECT extract(epoch FROM sent_at - created_at) * 1000 AS ms FROM reliability_outboxmessage "
                "WHERE created_at BETWEEN to_timestamp(%s) AND to_timestamp(%s) AND task_name = %s",
                [*window, task],
            )
        )
        for task in ("beans.deduct", "trades.record_outcome")
    }
    gaps_found = None
    if scalar("SELECT to_regclass('reliability_streamwatermark') IS NOT NULL"):
        gaps_found = int(scalar("SELECT coalesce(sum(gaps_found), 0) FROM reliability_streamwatermark"))
    children.stop(*workers, beat)
    deducted = counts.get("deducted", 0)
    if trades != total or entries != deducted or counts.get("pending"):
        raise RuntimeError(f"expected {total} settled trades, got {counts}; {entries} ledger entries")
    return ExactlyOnce(
        trades=trades,
        seconds=seconds,
        per_s=trades / seconds,
        placement_per_s=trades / (placed - started),
        db_seconds=db_seconds,
        p50_ms=p50,
        p99_ms=p99,
        settled_p50_ms=s50,
        settled_p99_ms=s99,
        max_ms=smax,
        deducted=deducted,
        rejected=counts.get("rejected", 0),
        dead_letters=int(scalar("SELECT count(*) FROM reliability_deadletter")),
        duplicates_suppressed=int(
            scalar("SELECT coalesce(sum(redeliveries), 0) FROM reliability_messagelog")
        ),
        relayed_by_sweep=relayed,
        publish_delay_ms=publish_delay,
        cpu_s=cpu_s,
        paced=paced,
        gaps_found=gaps_found,
        batch_sizes=batch_sizes(window),
    )


# Requests a second the bench's API key may send: far above anything two cores serve.
HTTP_RATE_LIMIT_PER_S = 1_000_000


def http_client(choice: str) -> tuple[str | None, str]:
    """The load generator to use: (the path of wrk, or None for the Python client; its name)."""
    from bench.httpload import wrk_ensure, wrk_version

    if choice == "python":
        return None, "python"
    wrk = wrk_ensure()
    if wrk is None:
        if choice == "wrk":
            raise RuntimeError("wrk is not installed and cannot be (apt-get install wrk, as root)")
        log("wrk is not installed and cannot be: the HTTP leg uses the Python load generator")
        return None, "python"
    return wrk, wrk_version(wrk)


def http_load(
    children: Children,
    wrk: str | None,
    spec: LoadSpec,
    name: str,
    *,
    watch: list[Child],
    on_poll: Callable[[], None] = lambda: None,
) -> tuple[LoadResult, float]:
    """Run the load generator (``name``.log) until its result appears; raise if it has none.

    Return the result and the CPU seconds the generator used, read before it exits (a CPU
    snapshot taken after the run would miss an exited process).
    """
    from bench.httpload import python_argv, result_read, wrk_argv, wrk_errors

    for stale in (spec.result_path, Path(f"{spec.result_path}.wrk")):
        stale.unlink(missing_ok=True)
    secret = RUN_DIR / f"{name}.{'lua' if wrk else 'spec.json'}"  # holds the API key
    argv = wrk_argv(wrk, spec, secret) if wrk else python_argv(spec, secret)
    child = children.start(name, argv)
    try:
        deadline = time.monotonic() + spec.timeout_s + 30
        while not spec.result_path.exists() and child.alive():
            check_alive(watch)
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name}: no result within {spec.timeout_s:.0f}s:\n{child.tail()}")
            on_poll()
            time.sleep(POLL_S)
        cpu_s = cpu.process_seconds(child.pid)
        # wrk sleeps out its --duration unless interrupted; its script counted the requests.
        # Again until it exits: the first signal may reach the wrk thread that is stopping.
        for _ in range(50):
            if not child.alive():
                break
            if wrk:
                child.signal(signal.SIGINT)
            child.wait(0.2)
    finally:
        children.stop(child)
        secret.unlink(missing_ok=True)
    errors = wrk_errors(spec) if wrk else {}
    if not spec.result_path.exists():
        raise RuntimeError(f"{name} ended without a result (socket errors {errors}):\n{child.tail()}")
    result = result_read(spec.result_path)
    result.errors.update(errors)
    return result, cpu_s if result.cpu_s is None else result.cpu_s


def http_checked(result: LoadResult, expected: int, web: WebTier, what: str) -> None:
    """Fail loudly on a missing answer, a socket error or any answer but 201."""
    if result.requests != expected or result.non_201 or result.errors or result.unmatched:
        raise RuntimeError(
            f"{what}: {result.requests} of {expected} requests answered, statuses {result.statuses} "
            f"({result.non_201} not 201), client errors {result.errors}; web tier log "
            f"{web.child.log_path.relative_to(REPO)}:\n{web.child.tail(30)}"
        )


class CpuWatch:
    """CPU snapshots once a second while a measurement runs, and the backends' names seen meanwhile.

    A gunicorn worker reconnects to PostgreSQL after ``CONN_MAX_AGE`` (60 s): a snapshot at the
    end alone would miss what the backend it left had used, and could not name it.
    """

    def __init__(self) -> None:
        self.before = self.last = cpu.snapshot()
        self.backends = backend_names()
        self.at = time.monotonic()

    def poll(self) -> None:
        if time.monotonic() - self.at >= 1:
            self.take()

    def take(self) -> cpu.Snapshot:
        self.last = cpu.snapshot(self.last)
        self.backends.update(backend_names())
        self.at = time.monotonic()
        return self.last


def backend_names() -> dict[int, str]:
    """The bench database's PostgreSQL backends by the name their client gave (PGAPPNAME ``bench-<name>``)."""
    rows = scalar_rows(
        "SELECT pid, application_name FROM pg_stat_activity WHERE datname = %s AND application_name LIKE %s",
        [DB_NAME, "bench-%"],
    )
    return {int(pid): str(name).removeprefix("bench-") for pid, name in rows}


def measure_http(
    args: argparse.Namespace, children: Children, tag: str, wrk: str | None, client: str
) -> Http:
    """The pipeline through the web tier: ``--trades`` requests ``POST /api/trades/``, one trade each.

    The workers and beat of the exactly-once leg, a ``WebTier`` (gunicorn with
    ``project/gunicorn.conf.py``, ``--http-workers`` x ``--http-threads``) and an API key of
    the bench's own; ``--http-connections`` clients send one request at a time each, over
    the bench's accounts. The clock runs from the first request until the database shows
    every trade settled. Each process connects to PostgreSQL as ``bench-<kind>`` so the
    CPU of its backends is told apart.
    """
    from project.models import ApiKey

    accounts = database_reset()
    queues_reset()
    workers, beat = pipeline_start(args, children, kind="http", name=tag, appnames=True)
    # The developer's WEB_*, API_* and GUNICORN_* settings stay out; the rate limit counts in the
    # bench's Redis database. No control socket: gunicorn's default path ($HOME/.gunicorn/gunicorn.ctl)
    # is one per user, and a second master takes it over from (and at exit deletes it under) the
    # developer's own gunicorn.
    web_env = {
        key: value for key, value in bench_env().items() if not key.startswith(("WEB_", "API_", "GUNICORN_"))
    }
    web_env.update(
        PGAPPNAME="bench-gunicorn",
        API_RATE_LIMIT_REDIS_URL=REDIS_URL,
        GUNICORN_CMD_ARGS="--no-control-socket",
    )
    web = WebTier(
        env=web_env,
        log_path=RUN_DIR / f"web-{tag}.log",
        workers=args.http_workers,
        threads=args.http_threads,
    )
    children.adopt(web.child)
    web.start(timeout=90)
    key = web.api_key(f"bench-{tag}", "trades:write", rate_limit_per_s=HTTP_RATE_LIMIT_PER_S)
    client_id = ApiKey.objects.get(prefix=key.split("_")[1]).pk
    processes = [*workers, beat, web.child]
    settled = pipeline_settled(processes)

    def spec(requests: int, name: str) -> LoadSpec:
        return LoadSpec(
            url=web.url(),
            key=key,
            accounts=accounts,
            requests=requests,
            connections=args.http_connections,
            beans=BEANS,
            result_path=RUN_DIR / f"{name}.json",
            timeout_s=args.timeout,
        )

    def wait_settled(what: str, on_poll: Callable[[], None] = lambda: None) -> float:
        deadline = time.monotonic() + args.timeout
        while not settled():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {args.timeout:.0f}s waiting for {what}")
            on_poll()
            time.sleep(POLL_S)
        return time.time()

    # Warm-up: every gunicorn worker and every worker child opens its connections once.
    warm = args.http_connections * 4
    warm_result, _ = http_load(
        children, wrk, spec(warm, f"load-warm-{tag}"), f"load-warm-{tag}", watch=processes
    )
    http_checked(warm_result, warm, web, "warm-up requests")
    wait_settled("warm-up trades")
    base_id = int(scalar("SELECT coalesce(max(id), 0) FROM trades_trade"))
    watch = CpuWatch()
    result, load_cpu_s = http_load(
        children, wrk, spec(args.trades, f"load-{tag}"), f"load-{tag}", watch=processes, on_poll=watch.poll
    )
    http_checked(result, args.trades, web, f"{args.trades} requests")
    finished = wait_settled(f"{args.trades} trades placed over HTTP to settle", watch.poll)
    cpu_s = cpu.attribute(
        watch.before,
        watch.take(),
        bench_pid=os.getpid(),
        database=DB_NAME,
        named_groups={
            "gunicorn": [web.child.pid],
            "worker": [worker.pid for worker in workers],
            "beat": [beat.pid],
        },
        backends=watch.backends,
    )
    cpu_s["load generator"] = load_cpu_s  # it has exited: measured by http_load
    seconds = finished - result.first_sent
    between = [base_id]
    p50, p99, _ = percentiles(TRADE_TO_DEDUCTED, between)
    s50, s99, _ = percentiles(TRADE_TO_SETTLED, between)
    counts = dict(
        scalar_rows("SELECT status, count(*) FROM trades_trade WHERE id > %s GROUP BY status", between)
    )
    trades = sum(counts.values())
    entries = int(
        scalar(
            "SELECT count(*) FROM trades_trade t JOIN beans_ledgerentry l "
            "ON l.message_id = t.deduction_message_id WHERE t.id > %s",
            between,
        )
    )
    theirs = int(
        scalar("SELECT count(*) FROM trades_trade WHERE id > %s AND client_id = %s", [base_id, client_id])
    )
    window = [result.first_sent, finished]
    sizes = batch_sizes(window)
    children.stop(web.child, *workers, beat)
    deducted = counts.get("deducted", 0)
    if trades != args.trades or theirs != trades or entries != deducted or deducted != trades:
        raise RuntimeError(
            f"{args.trades} requests answered 201, but the database holds {trades} trades after them "
            f"({theirs} placed with the bench's key): {counts}; {entries} ledger entries"
        )
    return Http(
        trades=trades,
        requests=result.requests,
        statuses=result.statuses,
        non_201=result.non_201,
        seconds=seconds,
        per_s=trades / seconds,
        request_per_s=result.per_s,
        request_p50_ms=result.percentile(0.5),
        request_p99_ms=result.percentile(0.99),
        request_max_ms=max(result.latencies_ms, default=0.0),
        p50_ms=p50,
        p99_ms=p99,
        settled_p50_ms=s50,
        settled_p99_ms=s99,
        deducted=deducted,
        rejected=counts.get("rejected", 0),
        dead_letters=int(scalar("SELECT count(*) FROM reliability_deadletter")),
        duplicates_suppressed=int(
            scalar("SELECT coalesce(sum(redeliveries), 0) FROM reliability_messagelog")
        ),
        client=client,
        cpu_s=cpu_s,
        batch_sizes=sizes,
    )


def batch_sizes(window: list[float]) -> dict[str, dict[str, float]]:
    """Messages per consumer transaction (message-log rows sharing ``applied_at``) and per
    relay pass (outbox rows sharing ``sent_at``), for the measured window."""
    sizes: dict[str, dict[str, float]] = {}
    queries = {
        "consumed": "SELECT handler, avg(n), max(n) FROM (SELECT handler, applied_at, count(*) AS n "
        "FROM reliability_messagelog WHERE applied_at BETWEEN to_timestamp(%s) AND to_timestamp(%s) "
        "GROUP BY handler, applied_at) AS b GROUP BY handler",
        "relayed": "SELECT task_name, avg(n), max(n) FROM (SELECT task_name, sent_at, count(*) AS n "
        "FROM reliability_outboxmessage WHERE sent_at BETWEEN to_timestamp(%s) AND to_timestamp(%s) "
        "GROUP BY task_name, sent_at) AS b GROUP BY task_name",
    }
    for kind, sql in queries.items():
        for task, mean, top in scalar_rows(sql, window):
            sizes[f"{kind} {task}"] = {"mean": float(mean), "max": float(top)}
    return sizes


def measure_baseline(args: argparse.Namespace, children: Children, tag: str) -> Baseline:
    accounts = database_reset()
    queues_reset()
    workers = [
        children.start(
            f"baseline-worker{i}-{tag}",
            celery_argv(
                "bench.baseline",
                "worker",
                "-Q",
                "bench-baseline",
                "-n",
                f"bench-baseline{i}@%h",
                "-c",
                str(args.concurrency),
                "--without-mingle",
                "--without-gossip",
                loglevel=args.loglevel,
            ),
        )
        for i in range(1, args.workers + 1)
    ]
    wait_consumers(["bench-baseline"], args.workers, workers)
    total_sql = "SELECT coalesce(sum(balance), 0) FROM beans_account"
    opening = int(scalar(total_sql))

    def applied() -> int:
        check_alive(workers)
        return (opening - int(scalar(total_sql))) // BEANS

    with producer_pool(args.producers) as pool:
        warm = args.workers * args.concurrency * 4 + args.producers * 4
        produce_and_wait(
            pool,
            _send_baseline,
            jobs(accounts, warm, args.producers),
            done=lambda: applied() >= warm,
            timeout=args.timeout,
            what="warm-up messages",
        )
        before = applied()
        cpu_before = cpu.snapshot()
        started, placed, finished = produce_and_wait(
            pool,
            _send_baseline,
            jobs(accounts, args.trades, args.producers),
            done=lambda: applied() - before >= args.trades,
            timeout=args.timeout,
            what=f"{args.trades} baseline updates",
        )
        cpu_s = cpu_usage(cpu_before, workers)
    count = applied() - before
    children.stop(*workers)
    seconds = finished - started
    return Baseline(
        messages=args.trades,
        seconds=seconds,
        per_s=args.trades / seconds,
        placement_per_s=args.trades / (placed - started),
        applied=count,
        cpu_s=cpu_s,
    )


def measure_raw(args: argparse.Namespace) -> dict[str, float]:
    from bench.rawamqp import queue_declare, round_trip
    from reliability.conf import settings

    queues_reset()
    queue_declare(
        broker(),
        dead_letter_exchange=settings.RELIABILITY_DEAD_LETTER_EXCHANGE,
        delivery_limit=settings.RELIABILITY_DELIVERY_LIMIT,
    )
    result = round_trip(
        broker(),
        messages=args.raw_messages,
        consumers=args.workers,
        prefetch=args.concurrency * settings.CELERY_WORKER_PREFETCH_MULTIPLIER,
        timeout=args.timeout,
    )
    return {
        "messages": result.messages,
        "seconds": result.seconds,
        "per_s": result.per_s,
        "publish_per_s": result.messages / result.publish_seconds,
    }


# --------------------------------------------------------------------------- report


def median(values: list[float]) -> Any:
    """The median, or None (JSON null) when there is nothing to take it of."""
    return statistics.median(values) if values else None


def cpu_medians(samples: list[tuple[dict[str, float], int]]) -> dict[str, float]:
    """Median CPU milliseconds per item of each group (the busy share stays a share)."""
    groups = {group for cpu_s, _ in samples for group in cpu_s}
    return {
        group: median(
            [
                cpu_s.get(group, 0.0) * (1 if group == "machine_busy_share" else 1000 / items)
                for cpu_s, items in samples
            ]
        )
        for group in sorted(groups)
    }


OWN_CPU = ("celery", "bench+producers", f"postgres:{DB_NAME}")


def cpu_cost_ratio(repeats: list[Repeat]) -> Any:
    """Median over repeats of (own CPU per baseline message) / (own CPU per trade)."""
    ratios = []
    for r in repeats:
        eo = sum(r.exactly_once.cpu_s.get(g, 0.0) for g in OWN_CPU) / r.exactly_once.trades
        bl = sum(r.baseline.cpu_s.get(g, 0.0) for g in OWN_CPU) / r.baseline.messages
        if eo > 0 and bl > 0:
            ratios.append(bl / eo)
    return median(ratios)


def settings_snapshot() -> dict[str, Any]:
    """The project settings that shape the figures (all at their defaults: the bench clears overrides)."""
    from reliability.conf import settings

    names = [
        "CELERY_WORKER_PREFETCH_MULTIPLIER",
        "CELERY_TASK_ACKS_LATE",
        "CELERY_BROKER_TRANSPORT_OPTIONS",
        "RELIABILITY_RELAY_GRACE_S",
        "RELIABILITY_RELAY_BATCH_SIZE",
        "RELIABILITY_RELAY_LOOP",
        "RELIABILITY_RELAY_LINGER_MS",
        "RELIABILITY_RELAY_WINDOW",
        "RELIABILITY_ENVELOPE_MAX_MESSAGES",
        "TRADES_DEDUCTION_STREAMS",
    ]
    values = {name: getattr(settings, name, None) for name in names}
    values["DATABASE_CONN_MAX_AGE"] = settings.DATABASES["default"].get("CONN_MAX_AGE")
    values["beat_schedule"] = sorted(getattr(settings, "CELERY_BEAT_SCHEDULE", {}))
    return values


def summarize(args: argparse.Namespace, repeats: list[Repeat]) -> dict[str, Any]:
    eo = median([r.exactly_once.per_s for r in repeats])
    bl = median([r.baseline.per_s for r in repeats])
    raws = [r.raw_amqp["per_s"] for r in repeats if r.raw_amqp]
    raw = median(raws) if raws else None
    batched = [r.exactly_once_batched.per_s for r in repeats if r.exactly_once_batched]
    eob = median(batched) if batched else None
    https = [r.http for r in repeats if r.http]
    http = median([h.per_s for h in https])
    return {
        "exactly_once_per_s": eo,
        "baseline_per_s": bl,
        # The same pipeline, trades placed in batches: what the placement ceiling costs.
        "exactly_once_batched_placement_per_s": eob,
        "ratio_batched_placement_vs_baseline": eob / bl if eob else None,
        "ratio_batched_placement_vs_raw_amqp": eob / raw if eob and raw else None,
        "batched_placement_paced_p50_ms": median(
            [
                r.exactly_once_batched.paced["p50_ms"]
                for r in repeats
                if r.exactly_once_batched and r.exactly_once_batched.paced
            ]
        ),
        "batched_placement_paced_p99_ms": median(
            [
                r.exactly_once_batched.paced["p99_ms"]
                for r in repeats
                if r.exactly_once_batched and r.exactly_once_batched.paced
            ]
        ),
        # The same pipeline through the web tier: POST /api/trades/, one trade per request.
        "http_exactly_once_per_s": http,
        "ratio_http_vs_baseline": http / bl if http else None,
        "http_request_p50_ms": median([h.request_p50_ms for h in https]),
        "http_request_p99_ms": median([h.request_p99_ms for h in https]),
        "http_p50_ms": median([h.p50_ms for h in https]),
        "http_p99_ms": median([h.p99_ms for h in https]),
        "http_requests_per_s": median([h.request_per_s for h in https]),
        "http_requests": sum(h.requests for h in https) if https else None,
        "http_non_201": sum(h.non_201 for h in https) if https else None,
        "raw_amqp_per_s": raw,
        "ratio_vs_baseline": eo / bl,
        "ratio_vs_raw_amqp": eo / raw if raw else None,
        # The latency goal is at half of peak throughput: the paced run (when there is one).
        "p50_ms": median([r.exactly_once.paced["p50_ms"] for r in repeats if r.exactly_once.paced])
        or median([r.exactly_once.p50_ms for r in repeats]),
        "p99_ms": median([r.exactly_once.paced["p99_ms"] for r in repeats if r.exactly_once.paced])
        or median([r.exactly_once.p99_ms for r in repeats]),
        "latency_at": "half of peak (paced run)" if args.paced_trades else "saturation",
        "saturated_p50_ms": median([r.exactly_once.p50_ms for r in repeats]),
        "saturated_p99_ms": median([r.exactly_once.p99_ms for r in repeats]),
        "batch_sizes": {
            what: {
                stat: median(
                    [
                        r.exactly_once.batch_sizes[what][stat]
                        for r in repeats
                        if what in r.exactly_once.batch_sizes
                    ]
                )
                for stat in ("mean", "max")
            }
            for what in sorted({what for r in repeats for what in r.exactly_once.batch_sizes})
        },
        "settled_p50_ms": median([r.exactly_once.settled_p50_ms for r in repeats]),
        "settled_p99_ms": median([r.exactly_once.settled_p99_ms for r in repeats]),
        "paced_p50_ms": median([r.exactly_once.paced["p50_ms"] for r in repeats if r.exactly_once.paced]),
        "paced_p99_ms": median([r.exactly_once.paced["p99_ms"] for r in repeats if r.exactly_once.paced]),
        "paced_settled_p50_ms": median(
            [r.exactly_once.paced["settled_p50_ms"] for r in repeats if r.exactly_once.paced]
        ),
        "paced_settled_p99_ms": median(
            [r.exactly_once.paced["settled_p99_ms"] for r in repeats if r.exactly_once.paced]
        ),
        "exactly_once_placement_per_s": median([r.exactly_once.placement_per_s for r in repeats]),
        "baseline_placement_per_s": median([r.baseline.placement_per_s for r in repeats]),
        "cpu_ms_per_item": {
            "exactly_once": cpu_medians([(r.exactly_once.cpu_s, r.exactly_once.trades) for r in repeats]),
            "batched_placement": cpu_medians(
                [
                    (r.exactly_once_batched.cpu_s, r.exactly_once_batched.trades)
                    for r in repeats
                    if r.exactly_once_batched
                ]
            ),
            "baseline": cpu_medians([(r.baseline.cpu_s, r.baseline.messages) for r in repeats]),
            "http": cpu_medians([(h.cpu_s, h.trades) for h in https]),
        },
        # Less sensitive to the machine's other load than the throughput ratio: CPU the bench's own
        # processes (producers, Celery, its PostgreSQL backends) spent per baseline message / per trade.
        "cpu_cost_ratio_vs_baseline": cpu_cost_ratio(repeats),
        # What one trade's own transaction costs, and the throughput that alone allows.
        "placement": {
            key: median([r.placement[key] for r in repeats if r.placement])
            for key in ("python_cpu_ms", "postgres_cpu_ms", "ceiling_per_s")
        },
        "cpu_count": os.cpu_count(),
        "params": {
            "trades": args.trades,
            "workers": args.workers,
            "concurrency": args.concurrency,
            "repeats": args.repeats,
            "producers": args.producers,
            "producer_kind": "processes",
            "raw_messages": args.raw_messages,
            "paced_trades": args.paced_trades,
            "paced_share": args.paced_share,
            "placement_batch": args.placement_batch,
            "batched_trades": args.batched_trades,
            "accounts": ACCOUNTS,
            "beans_per_trade": BEANS,
            "worker_loglevel": args.loglevel,
            "http": None
            if args.no_http
            else {
                "gunicorn_workers": args.http_workers,
                "gunicorn_threads": args.http_threads,
                "connections": args.http_connections,
                "client": https[0].client if https else None,
            },
        },
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "settings": settings_snapshot(),
        "repeats": [asdict(r) for r in repeats],
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def rounded(value: Any) -> Any:
    """Floats to 4 decimals, recursively: the noise is far larger."""
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {key: rounded(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [rounded(item) for item in value]
    return value


def report(summary: dict[str, Any]) -> None:
    p = summary["params"]
    print()
    print("=" * 78)
    print(
        f"N={p['trades']} trades, W={p['workers']} worker(s) x C={p['concurrency']}, "
        f"{p['producers']} producer processes, cpu_count={summary['cpu_count']}, "
        f"repeats={p['repeats']} (medians below)"
    )
    for i, r in enumerate(summary["repeats"], start=1):
        e, b, raw = r["exactly_once"], r["baseline"], r["raw_amqp"]
        raw_text = f" | raw {raw['per_s']:7.0f}/s" if raw else ""
        http_text = f" | http {r['http']['per_s']:7.1f}/s" if r.get("http") else ""
        print(
            f"  repeat {i}: exactly-once {e['per_s']:7.1f}/s (placed {e['placement_per_s']:6.1f}/s, "
            f"p50 {e['p50_ms']:6.0f} ms, p99 {e['p99_ms']:6.0f} ms) | baseline {b['per_s']:7.1f}/s "
            f"(sent {b['placement_per_s']:6.0f}/s){raw_text}{http_text}"
        )
    print(f"exactly-once : {summary['exactly_once_per_s']:9.1f} deductions/s end to end")
    for what, size in summary["batch_sizes"].items():
        print(f"               messages per {what}: mean {size['mean']:.1f}, max {size['max']:.0f}")
    print(
        f"               trade->deducted p50 {summary['saturated_p50_ms']:.0f} ms, "
        f"p99 {summary['saturated_p99_ms']:.0f} ms; "
        f"trade->settled p50 {summary['settled_p50_ms']:.0f} ms, p99 {summary['settled_p99_ms']:.0f} ms"
    )
    print("               (under saturation: these include the backlog the producers build up)")
    if p["paced_trades"]:
        print(
            f"  paced run  : trade->deducted p50 {summary['paced_p50_ms']:.0f} ms, p99 {summary['paced_p99_ms']:.0f} ms; "
            f"trade->settled p50 {summary['paced_settled_p50_ms']:.0f} ms, "
            f"p99 {summary['paced_settled_p99_ms']:.0f} ms "
            f"({p['paced_trades']} trades at {p['paced_share']:.0%} of the throughput)"
        )
    if summary["exactly_once_batched_placement_per_s"]:
        batched_sizes = {
            what: size
            for r in summary["repeats"][-1:]
            if r["exactly_once_batched"]
            for what, size in r["exactly_once_batched"]["batch_sizes"].items()
        }
        print(
            f"  with trades placed {p['placement_batch']} per call (trades_place_many): "
            f"{summary['exactly_once_batched_placement_per_s']:.1f} deductions/s end to end; "
            + ", ".join(f"{what} mean {size['mean']:.1f}" for what, size in batched_sizes.items())
        )
        if summary["batched_placement_paced_p99_ms"]:
            print(
                f"               paced at {p['paced_share']:.0%} of its throughput: trade->deducted "
                f"p50 {summary['batched_placement_paced_p50_ms']:.0f} ms, "
                f"p99 {summary['batched_placement_paced_p99_ms']:.0f} ms"
            )
    if summary["http_exactly_once_per_s"]:
        h = p["http"]
        print(
            f"through HTTP : {summary['http_exactly_once_per_s']:9.1f} trades/s placed by POST /api/trades/ "
            f"and deducted ({summary['http_requests_per_s']:.1f} requests/s answered; gunicorn "
            f"{h['gunicorn_workers']} x {h['gunicorn_threads']}, {h['connections']} clients, {h['client']})"
        )
        print(
            f"               request p50 {summary['http_request_p50_ms']:.0f} ms, "
            f"p99 {summary['http_request_p99_ms']:.0f} ms; request->deducted p50 {summary['http_p50_ms']:.0f} ms, "
            f"p99 {summary['http_p99_ms']:.0f} ms; {summary['http_requests']} requests, "
            f"{summary['http_non_201']} not 201"
        )
    print(f"baseline     : {summary['baseline_per_s']:9.1f} updates/s (plain Celery, acks_late, no confirms)")
    if summary["raw_amqp_per_s"]:
        print(
            f"raw AMQP     : {summary['raw_amqp_per_s']:9.1f} msgs/s "
            f"({p['raw_messages']} persistent msgs, batched confirms, manual acks)"
        )
    for kind, per_group in summary["cpu_ms_per_item"].items():
        if not per_group:
            continue
        busy = per_group.get("machine_busy_share", 0)
        groups = ", ".join(f"{g} {ms:.1f}" for g, ms in per_group.items() if g != "machine_busy_share")
        print(f"CPU ms per {kind:12s}: {groups} (machine busy {busy:.0%})")
    print(f"ratio exactly_once/baseline = {summary['ratio_vs_baseline']:.3f}")
    if summary["cpu_cost_ratio_vs_baseline"]:
        print(
            f"  CPU-cost ratio (baseline own CPU per msg / exactly-once own CPU per trade) = "
            f"{summary['cpu_cost_ratio_vs_baseline']:.3f}"
        )
    if summary["ratio_vs_raw_amqp"]:
        print(f"ratio exactly_once/raw_amqp = {summary['ratio_vs_raw_amqp']:.4f}")
    if summary["ratio_http_vs_baseline"]:
        print(f"ratio http_exactly_once/baseline = {summary['ratio_http_vs_baseline']:.3f}")
    print(
        f"goals: >= 3x baseline: {summary['ratio_vs_baseline']:.2f}x; "
        f">= 50% of raw AMQP: {100 * (summary['ratio_vs_raw_amqp'] or 0):.1f}%; "
        f"p99 <= 100 ms at {summary['latency_at']}: p50 {summary['p50_ms']:.0f} ms, p99 {summary['p99_ms']:.0f} ms"
    )
    if summary["ratio_batched_placement_vs_baseline"]:
        print(
            f"with batched placement ({p['placement_batch']} trades per call): "
            f"{summary['ratio_batched_placement_vs_baseline']:.2f}x baseline"
            + (
                f", {100 * summary['ratio_batched_placement_vs_raw_amqp']:.1f}% of raw AMQP"
                if summary["ratio_batched_placement_vs_raw_amqp"]
                else ""
            )
        )
    placement = summary["placement"]
    if placement.get("ceiling_per_s"):
        print(
            f"placement alone (trade_place, one transaction): {placement['python_cpu_ms']:.2f} ms Python + "
            f"{placement['postgres_cpu_ms']:.2f} ms PostgreSQL CPU per trade -> at most "
            f"{placement['ceiling_per_s']:.0f} trades/s on {summary['cpu_count']} cores "
            f"({placement['ceiling_per_s'] / summary['baseline_per_s']:.2f}x baseline) even if relay and consumers were free"
        )
    print(f"results: {RESULTS.relative_to(REPO)}")
    print("=" * 78)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
        help="trades of the batched-placement run (it is several times faster: more trades, a longer window)",
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
    parser.add_argument("--loglevel", default="warning", help="log level of the Celery workers and beat")
    args = parser.parse_args(argv)
    if args.timeout is None:
        args.timeout = max(300.0, args.trades / 2)
    if not 0 <= args.placement_batch <= 100:
        parser.error("--placement-batch must be from 0 to 100 (TRADES_BATCH_MAX at its default)")
    if args.paced_trades < 0 or not 0 < args.paced_share <= 1:
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
    ):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    return args


def vhost_create() -> None:
    admin = broker_admin()  # the management API, or rabbitmqctl where it is not enabled
    if VHOST in admin.vhosts():
        log(f"deleting vhost {VHOST!r} left over by an earlier run")
        admin.vhost_delete(VHOST)
    admin.vhost_add(VHOST)
    admin.permissions_set(VHOST, broker_user(), ".*", ".*", ".*")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    for stale in {*RUN_DIR.glob("*.log"), *RUN_DIR.glob("beat-schedule-*"), *RUN_DIR.glob("load-*")}:
        stale.unlink(missing_ok=True)  # logs and load results of the previous run
    os.chdir(REPO)
    # Settings read the environment once: it must be ours before django.setup().
    for key in [key for key in os.environ if _foreign(key)]:
        del os.environ[key]
    os.environ.update(bench_env())

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
        repeats: list[Repeat] = []
        for r in range(1, args.repeats + 1):
            tag = f"r{r}"
            log(f"repeat {r}/{args.repeats}: exactly-once, {args.trades} trades")
            placement = measure_placement(args.placement_trades) if args.placement_trades else None
            if placement:
                log(
                    f"  placement alone: {placement['python_cpu_ms']:.2f} ms Python + "
                    f"{placement['postgres_cpu_ms']:.2f} ms PostgreSQL CPU per trade -> ceiling "
                    f"{placement['ceiling_per_s']:.0f} trades/s on {os.cpu_count()} cores"
                )
            eo = measure_exactly_once(args, children, tag, total=args.trades)
            log(
                f"  exactly-once {eo.per_s:.1f}/s in {eo.seconds:.2f}s (placement {eo.placement_per_s:.1f}/s), "
                f"p50 {eo.p50_ms:.0f} ms, p99 {eo.p99_ms:.0f} ms, deducted {eo.deducted}, "
                f"rejected {eo.rejected}, dead letters {eo.dead_letters}, "
                f"duplicates suppressed {eo.duplicates_suppressed}, relayed by sweep {eo.relayed_by_sweep}, "
                f"stream gaps recorded {eo.gaps_found}"
            )
            for what, size in eo.batch_sizes.items():
                log(f"  messages per {what}: mean {size['mean']:.1f}, max {size['max']:.0f}")
            for task, (d50, d99, dmax) in eo.publish_delay_ms.items():
                log(f"  outbox->confirmed for {task}: p50 {d50:.0f} ms, p99 {d99:.0f} ms, max {dmax:.0f} ms")
            log(f"  {cpu_line(eo.cpu_s, eo.trades)}")
            if eo.paced:
                log(
                    f"  paced at {eo.paced['rate_per_s']:.1f}/s: trade->deducted p50 {eo.paced['p50_ms']:.0f} ms, "
                    f"p99 {eo.paced['p99_ms']:.0f} ms; trade->settled p50 {eo.paced['settled_p50_ms']:.0f} ms, "
                    f"p99 {eo.paced['settled_p99_ms']:.0f} ms"
                )
            batched = None
            if args.placement_batch > 1:
                log(
                    f"repeat {r}/{args.repeats}: exactly-once, {args.batched_trades} trades placed "
                    f"{args.placement_batch} per call"
                )
                batched = measure_exactly_once(
                    args, children, tag, total=args.batched_trades, placement_batch=args.placement_batch
                )
                log(
                    f"  exactly-once with batched placement {batched.per_s:.1f}/s in {batched.seconds:.2f}s "
                    f"(placement {batched.placement_per_s:.1f}/s), p50 {batched.p50_ms:.0f} ms, "
                    f"p99 {batched.p99_ms:.0f} ms"
                )
                for what, size in batched.batch_sizes.items():
                    log(f"  messages per {what}: mean {size['mean']:.1f}, max {size['max']:.0f}")
                log(f"  {cpu_line(batched.cpu_s, batched.trades)}")
                if batched.paced:
                    log(
                        f"  paced at {batched.paced['rate_per_s']:.1f}/s: trade->deducted "
                        f"p50 {batched.paced['p50_ms']:.0f} ms, p99 {batched.paced['p99_ms']:.0f} ms"
                    )
            http = None
            if not args.no_http:
                log(
                    f"repeat {r}/{args.repeats}: exactly-once through HTTP, {args.trades} requests "
                    f"POST /api/trades/ ({args.http_connections} clients, {client}; gunicorn "
                    f"{args.http_workers} x {args.http_threads})"
                )
                http = measure_http(args, children, tag, wrk, client)
                log(
                    f"  HTTP {http.per_s:.1f}/s placed and deducted in {http.seconds:.2f}s "
                    f"({http.request_per_s:.1f} requests/s answered), request p50 {http.request_p50_ms:.0f} ms, "
                    f"p99 {http.request_p99_ms:.0f} ms; request->deducted p50 {http.p50_ms:.0f} ms, "
                    f"p99 {http.p99_ms:.0f} ms; {http.requests} requests, {http.non_201} not 201"
                )
                for what, size in http.batch_sizes.items():
                    log(f"  messages per {what}: mean {size['mean']:.1f}, max {size['max']:.0f}")
                log(f"  {cpu_line(http.cpu_s, http.trades)}")
            log(f"repeat {r}/{args.repeats}: baseline, {args.trades} messages")
            bl = measure_baseline(args, children, tag)
            log(f"  baseline {bl.per_s:.1f}/s in {bl.seconds:.2f}s (sent {bl.placement_per_s:.0f}/s)")
            log(f"  {cpu_line(bl.cpu_s, bl.messages)}")
            raw = None
            if not args.no_raw:
                log(f"repeat {r}/{args.repeats}: raw AMQP, {args.raw_messages} messages")
                raw = measure_raw(args)
                log(f"  raw AMQP {raw['per_s']:.0f}/s in {raw['seconds']:.2f}s")
            repeats.append(
                Repeat(
                    exactly_once=eo,
                    baseline=bl,
                    raw_amqp=raw,
                    placement=placement,
                    exactly_once_batched=batched,
                    http=http,
                )
            )
        summary = summarize(args, repeats)
        summary["elapsed_s"] = time.monotonic() - started
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(rounded(summary), indent=2) + "\n")
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
            try:
                broker_admin().vhost_delete(VHOST)
            except BrokerAdminError as exc:
                log(f"could not delete vhost {VHOST!r}: {exc}")
        log(f"done in {time.monotonic() - started:.0f}s; worker logs in {RUN_DIR.relative_to(REPO)}/")


if __name__ == "__main__":
    sys.exit(main())
