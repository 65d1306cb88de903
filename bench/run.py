"""Benchmark: exactly-once pipeline vs plain at-least-once Celery vs raw AMQP, in one run.

Usage (from the repository root; ``make bench`` runs it)::

    .venv/bin/python bench/run.py [--trades N] [--workers W] [--concurrency C] [--repeats R]
                                  [--http-workers G] [--http-connections K] [--http-trades H]
                                  [--no-http] [--no-alternatives] [--alternatives NAME ...]

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
* **the alternatives through HTTP** (``bench/alternatives/``), right after it, in this order,
  on the same gunicorn (one per repeat, shared by its HTTP legs), the same API key, accounts,
  load generator and client count, ``--http-trades`` requests each:
  ``best_practice_celery`` (commit, then ``on_commit(delay)``; confirms, acks_late,
  reject_on_worker_lost, a quorum queue; W ``celery -A bench.alternatives.best_practice
  worker -c C``), ``django_celery_outbox`` (the trade and the library's outbox row in one
  transaction; ``manage.py celery_outbox_relay`` publishes; W ``celery -A
  bench.alternatives.outbox worker -c C``) and ``noop_view`` (parses the same request and
  answers 201: no authentication, no database; the web tier's ceiling). The clock runs
  until every trade is settled; each must be deducted, and deductions beyond one per trade
  (an at-least-once redelivery applied twice) are counted and reported, not failed.
  Every process of every HTTP leg, and the bench database's migrations, run with
  ``DJANGO_SETTINGS_MODULE=bench.settings`` (the project's settings plus these apps).
* **baseline**: the same producers send N plain ``apply_async`` messages (no outbox,
  no confirms) to W ``celery -A bench.baseline worker -c C`` whose task runs one
  conditional UPDATE; the clock stops when the balances show all N applied.
* **raw AMQP**: persistent publishes with batched confirms to a quorum queue,
  consumed with one manual ack per message by W processes; no Celery, no database.
* after the repeats, **/metrics against history** (``bench/metrics_scrape.py``, 1k vs
  ``--metrics-scrape-rows``) and **the daily pages against history** (``bench/history.py``: admin
  lists, health page, /metrics, pipeline_status, a reconciler pass at 10k vs ``--history-rows``,
  default 10M; ``bench/results/history.json``), each on a database of its own; 0 skips either.

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
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import cpu, history, metrics_scrape  # noqa: E402 - needs the repository on sys.path
from bench.httpload import LoadResult, LoadSpec  # noqa: E402
from bench.profile import Profiles  # noqa: E402
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
QUEUES = [
    "beans",
    "trades",
    "housekeeping",
    "dead-letters",
    "bench-baseline",
    "bench-raw",
    "bench-best-practice",
    "bench-outbox",
]
# Every process of the HTTP legs (and the migrations) runs with the project's settings plus the
# alternatives (bench/settings.py), so all HTTP legs share one server configuration.
BENCH_SETTINGS = {"DJANGO_SETTINGS_MODULE": "bench.settings"}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def bench_env() -> dict[str, str]:
    """The environment of the bench process and of every subprocess it starts."""
    # Snowflake worker-id leases: a Redis database of the bench's own (tests use 13 and 15,
    # bench/ids.py 14), never the developer's database 0.
    return isolated_env(database_url=DATABASE_URL, broker_url=BROKER_URL, redis_url=REDIS_URL)


def run(
    *argv: str, timeout: float = 120, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv),
        check=check,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**bench_env(), **(env or {})},
        cwd=REPO,
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


def _queue_figures(names: list[str], figure: str) -> dict[str, int]:
    """Each queue's ``figure`` (``consumer_count``, ``message_count``) from a passive declare; 0 when absent."""
    import amqp

    figures: dict[str, int] = {}
    connection = broker().connect()
    try:
        channel = connection.channel()
        for name in names:
            try:
                figures[name] = getattr(channel.queue_declare(name, passive=True), figure)
            except amqp.exceptions.NotFound:
                figures[name] = 0
                channel = connection.channel()  # a failed passive declare closes the channel
    finally:
        connection.close()
    return figures


def consumer_counts(names: list[str]) -> dict[str, int]:
    """Return the consumer count of each queue (0 when it does not exist yet)."""
    return _queue_figures(names, "consumer_count")


def queue_depths(names: list[str]) -> dict[str, int]:
    """Return the messages ready in each queue (0 when it does not exist)."""
    return _queue_figures(names, "message_count")


def _pipeline_tallies() -> dict[str, int]:
    """The dead letters and the duplicates the message log suppressed, as a leg ends."""
    return {
        "dead_letters": int(scalar("SELECT count(*) FROM reliability_deadletter")),
        "duplicates_suppressed": int(
            scalar("SELECT coalesce(sum(redeliveries), 0) FROM reliability_messagelog")
        ),
    }


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
    # bench.settings: the project's tables and the alternatives' (bench/alternatives/, django_celery_outbox).
    result = run(
        sys.executable, "manage.py", "migrate", "--noinput", timeout=300, check=False, env=BENCH_SETTINGS
    )
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
    # PostgreSQL sessions opened during the measurement: to the bench database, and to all of them.
    db_sessions: int = 0
    db_sessions_all_databases: int = 0
    # The paced run after it (``--http-paced-trades`` at ``--paced-share`` of ``per_s``, the
    # Python client on an open-loop schedule): rate_per_s, trades, request_p50_ms,
    # request_p99_ms, p50_ms, p99_ms (request -> deducted); empty when there is none.
    paced: dict[str, float] = field(default_factory=dict)


@dataclass
class Alternative:
    """An alternative through the same web tier (``bench/alternatives/``), one trade per request."""

    name: str  # best_practice_celery, django_celery_outbox or noop_view
    path: str
    requests: int  # answered (warm-up not counted)
    statuses: dict[str, int]
    non_201: int
    # First request sent -> the database shows every trade settled (the no-op view: -> last answer).
    seconds: float
    # Trades placed through HTTP and deducted, per second (the no-op view: requests answered per second).
    per_s: float
    request_per_s: float
    request_p50_ms: float
    request_p99_ms: float
    request_max_ms: float
    # Trade.created_at -> its first Deduction.created_at, in ms (None for the no-op view).
    p50_ms: float | None
    p99_ms: float | None
    trades: int  # trade rows the measured requests wrote (0 for the no-op view)
    deducted: int  # trades with at least one deduction
    rejected: int
    deductions: int  # deduction rows
    duplicates: int  # deduction rows beyond one per trade: a redelivery applied twice (at-least-once)
    beans_taken: int  # what the balances lost: deductions x beans when the books agree
    left_in_queue: int | None  # messages still in its queue once its workers stopped (None: no queue)
    outbox_left: int | None  # django-celery-outbox: celery_outbox rows left (unpublished or in flight)
    outbox_dead_letters: int | None  # django-celery-outbox: celery_outbox_dead_letter rows
    client: str
    cpu_s: dict[str, float] = field(default_factory=dict)
    # PostgreSQL sessions opened during the measurement: to the bench database, and to all of them.
    # Celery closes the database connections around every task (CELERY_DB_REUSE_MAX unset).
    db_sessions: int = 0
    db_sessions_all_databases: int = 0


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
    # The alternatives through the same web tier, by name, in the order they ran.
    alternatives: dict[str, Alternative] = field(default_factory=dict)


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


def sessions_line(ours: int, every: int, items: int) -> str:
    return (
        f"PostgreSQL sessions opened per item: {ours / items:.2f} to {DB_NAME}, "
        f"{every / items:.2f} to all databases (postgres:exited is split in that proportion)"
    )


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
# Request -> deducted in two stages: placed -> relayed (the outbox row marked sent, after the
# broker's confirm) and relayed -> deducted (delivery and the consumer's transaction). The mark
# can land after the deduction, so the second stage may be negative.
TRADE_TO_RELAYED = (
    "SELECT extract(epoch FROM o.sent_at - t.created_at) * 1000 AS ms "
    "FROM trades_trade t JOIN reliability_outboxmessage o ON o.message_id = t.deduction_message_id "
    "WHERE t.id > %s"
)
RELAYED_TO_DEDUCTED = (
    "SELECT extract(epoch FROM l.created_at - o.sent_at) * 1000 AS ms "
    "FROM trades_trade t JOIN reliability_outboxmessage o ON o.message_id = t.deduction_message_id "
    "JOIN beans_ledgerentry l ON l.message_id = t.deduction_message_id WHERE t.id > %s"
)
# What each paced HTTP run reports, and the summary its median (``http_paced_<figure>``).
PACED_FIGURES = (
    *("rate_per_s", "request_p50_ms", "request_p99_ms", "p50_ms", "p99_ms"),
    *("relayed_p50_ms", "relayed_p99_ms", "relayed_to_deducted_p50_ms", "relayed_to_deducted_p99_ms"),
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
    args: argparse.Namespace,
    children: Children,
    *,
    kind: str,
    name: str,
    appnames: bool = False,
    env: dict[str, str] | None = None,
) -> tuple[list[Child], Child]:
    """Start W ``celery -A project worker -c C`` and one beat; return them once every worker consumes.

    Logs ``<kind>-worker<i>-<name>.log`` and ``<kind>-beat-<name>.log``. With ``appnames`` they
    connect to PostgreSQL as ``bench-worker`` and ``bench-beat`` (``backend_names``); ``env``
    goes on top of the bench's environment (``BENCH_SETTINGS`` for the HTTP leg).
    """
    schedule = RUN_DIR / f"beat-schedule-{name}"
    for path in RUN_DIR.glob(f"beat-schedule-{name}*"):
        path.unlink()
    worker_env = {**(env or {}), **({"PGAPPNAME": "bench-worker"} if appnames else {})}

    def worker_argv(node: str, concurrency: int, *queues: str) -> list[str]:
        return celery_argv(
            "project",
            "worker",
            "-n",
            f"{node}@%h",
            "-c",
            str(concurrency),
            *queues,
            "--without-mingle",
            "--without-gossip",
            loglevel=args.loglevel,
        )

    # The README's layout: the periodic tasks on a worker of their own, so that their burst every
    # few seconds does not hold the pool processes the deductions wait for.
    queues = ("-X", "housekeeping") if args.housekeeping_worker else ()
    workers = [
        children.start(
            f"{kind}-worker{i}-{name}",
            worker_argv(f"bench-{kind}{i}", args.concurrency, *queues),
            env=worker_env,
        )
        for i in range(1, args.workers + 1)
    ]
    if args.housekeeping_worker:
        housekeeping = worker_argv(f"bench-{kind}-housekeeping", 1, "-Q", "housekeeping")
        workers.append(children.start(f"{kind}-housekeeping-{name}", housekeeping, env=worker_env))
    beat = children.start(
        f"{kind}-beat-{name}",
        celery_argv("project", "beat", "--schedule", str(schedule), loglevel=args.loglevel),
        env={**(env or {}), **({"PGAPPNAME": "bench-beat"} if appnames else {})},
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
        **_pipeline_tallies(),
        relayed_by_sweep=relayed,
        publish_delay_ms=publish_delay,
        cpu_s=cpu_s,
        paced=paced,
        gaps_found=gaps_found,
        batch_sizes=batch_sizes(window),
    )


# Requests a second the bench's API key may send: far above anything two cores serve.
HTTP_RATE_LIMIT_PER_S = 1_000_000
# Requests of each HTTP leg unless --http-trades says otherwise: the web tier answers a few
# hundred a second here, and there are four HTTP legs per repeat.
HTTP_TRADES_DEFAULT_MAX = 1500


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
) -> tuple[LoadResult, float, int]:
    """Run the load generator (``name``.log) until its result appears; raise if it has none.

    Return the result, the CPU seconds the generator used, read before it exits (a CPU
    snapshot taken after the run would miss an exited process), and its pid (the process
    group the CPU attribution names "load generator").
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
    return result, cpu_s if result.cpu_s is None else result.cpu_s, child.pid


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
        self.sessions_before = database_sessions()
        self.at = time.monotonic()
        self.sessions = (0, 0)  # set by attribute(): sessions opened meanwhile, (ours, all databases)

    def poll(self) -> None:
        if time.monotonic() - self.at >= 1:
            self.take()

    def take(self) -> cpu.Snapshot:
        self.last = cpu.snapshot(self.last)
        self.backends.update(backend_names())
        self.at = time.monotonic()
        return self.last

    def attribute(self, named_groups: dict[str, list[int]], load_cpu_s: float) -> dict[str, float]:
        """CPU seconds per kind of process since the start; the load generator's own figure on top.

        The CPU of PostgreSQL backends that exited meanwhile is known for all databases only
        (``cpu.attribute``'s ``postgres:exited``); it is split by the sessions each side opened
        meanwhile (``pg_stat_database.sessions``): ``postgres:exited`` keeps the bench database's
        share, ``postgres:exited:others`` the rest (the other databases' short sessions, e.g. a
        test suite running on the same server). An estimate: it takes every session to cost the same.
        """
        cpu_s = cpu.attribute(
            self.before,
            self.take(),
            bench_pid=os.getpid(),
            database=DB_NAME,
            named_groups=named_groups,
            backends=self.backends,
        )
        cpu_s["load generator"] = load_cpu_s  # it has exited: measured by http_load
        ours, every = (
            now - then for now, then in zip(database_sessions(), self.sessions_before, strict=True)
        )
        self.sessions = (ours, every)
        exited = cpu_s.pop("postgres:exited", 0.0)
        if exited:
            share = min(ours / every, 1.0) if every > 0 else 0.0
            cpu_s["postgres:exited"] = exited * share
            cpu_s["postgres:exited:others"] = exited - exited * share
        return cpu_s


def database_sessions() -> tuple[int, int]:
    """Sessions ever opened to the bench database, and to all databases (``pg_stat_database``)."""
    ours, every = scalar_rows(
        "SELECT coalesce(sum(sessions) FILTER (WHERE datname = %s), 0), coalesce(sum(sessions), 0) "
        "FROM pg_stat_database",
        [DB_NAME],
    )[0]
    return int(ours), int(every)


def backend_names() -> dict[int, str]:
    """The bench database's PostgreSQL backends by the name their client gave (PGAPPNAME ``bench-<name>``)."""
    rows = scalar_rows(
        "SELECT pid, application_name FROM pg_stat_activity WHERE datname = %s AND application_name LIKE %s",
        [DB_NAME, "bench-%"],
    )
    return {int(pid): str(name).removeprefix("bench-") for pid, name in rows}


@dataclass
class WebServer:
    """The web tier a repeat's HTTP legs share, and the bench's API key for it."""

    web: WebTier
    key: str
    client_id: int  # the key's ApiKey id, which trades record as client_id


def web_start(args: argparse.Namespace, children: Children, tag: str) -> WebServer:
    """Start the web tier as operators run it, with ``bench.settings``, and make an API key.

    ``chaos.harness.WebTier``: gunicorn with ``project/gunicorn.conf.py``, ``--http-workers`` x
    ``--http-threads``. Its processes connect to PostgreSQL as ``bench-gunicorn``.
    """
    from project.models import ApiKey

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
        **BENCH_SETTINGS,
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
    return WebServer(web=web, key=key, client_id=ApiKey.objects.get(prefix=key.split("_")[1]).pk)


def load_spec(
    args: argparse.Namespace, server: WebServer, accounts: list[int], requests: int, name: str, path: str
) -> LoadSpec:
    return LoadSpec(
        url=server.web.url(),
        key=server.key,
        accounts=accounts,
        requests=requests,
        connections=args.http_connections,
        beans=BEANS,
        result_path=RUN_DIR / f"{name}.json",
        timeout_s=args.timeout,
        path=path,
    )


def wait_until(
    done: Callable[[], bool], *, timeout: float, what: str, on_poll: Callable[[], None] = lambda: None
) -> float:
    """Poll ``done`` every ``POLL_S`` until it holds; return the wall-clock time it did."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        on_poll()
        time.sleep(POLL_S)
    return time.time()


def measure_http(
    args: argparse.Namespace, children: Children, tag: str, server: WebServer, wrk: str | None, client: str
) -> Http:
    """The pipeline through the web tier: ``--http-trades`` requests ``POST /api/trades/``, one trade each.

    The workers and beat of the exactly-once leg (with ``bench.settings``, like the web tier),
    the repeat's web tier and API key; ``--http-connections`` clients send one request at a
    time each, over the bench's accounts. The clock runs from the first request until the
    database shows every trade settled. Each process connects to PostgreSQL as
    ``bench-<kind>`` so the CPU of its backends is told apart.
    """
    from bench.httpload import TRADES_PATH

    total = args.http_trades
    accounts = database_reset()
    queues_reset()
    workers, beat = pipeline_start(args, children, kind="http", name=tag, appnames=True, env=BENCH_SETTINGS)
    web = server.web
    processes = [*workers, beat, web.child]
    settled = pipeline_settled(processes)

    # Warm-up: every gunicorn worker and every worker child opens its connections once.
    warm = args.http_connections * 4
    warm_result, _, _ = http_load(
        children,
        wrk,
        load_spec(args, server, accounts, warm, f"load-warm-{tag}", TRADES_PATH),
        f"load-warm-{tag}",
        watch=processes,
    )
    http_checked(warm_result, warm, web, "warm-up requests")
    wait_until(settled, timeout=args.timeout, what="warm-up trades")
    base_id = int(scalar("SELECT coalesce(max(id), 0) FROM trades_trade"))
    watch = CpuWatch()
    groups = {"gunicorn": [web.child.pid], "worker": [worker.pid for worker in workers], "beat": [beat.pid]}
    with Profiles(args.profile / tag, groups) if args.profile else nullcontext():
        result, load_cpu_s, load_pid = http_load(
            children,
            wrk,
            load_spec(args, server, accounts, total, f"load-{tag}", TRADES_PATH),
            f"load-{tag}",
            watch=processes,
            on_poll=watch.poll,
        )
        http_checked(result, total, web, f"{total} requests")
        finished = wait_until(
            settled,
            timeout=args.timeout,
            what=f"{total} trades placed over HTTP to settle",
            on_poll=watch.poll,
        )
    cpu_s = watch.attribute(
        {**groups, "load generator": [load_pid]},
        load_cpu_s,
    )
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
        scalar(
            "SELECT count(*) FROM trades_trade WHERE id > %s AND client_id = %s", [base_id, server.client_id]
        )
    )
    window = [result.first_sent, finished]
    sizes = batch_sizes(window)
    paced = http_paced(args, children, tag, server, accounts, trades / seconds, processes, settled)
    children.stop(*workers, beat)
    deducted = counts.get("deducted", 0)
    if trades != total or theirs != trades or entries != deducted or deducted != trades:
        raise RuntimeError(
            f"{total} requests answered 201, but the database holds {trades} trades after them "
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
        **_pipeline_tallies(),
        client=client,
        cpu_s=cpu_s,
        batch_sizes=sizes,
        db_sessions=watch.sessions[0],
        db_sessions_all_databases=watch.sessions[1],
        paced=paced,
    )


def http_paced(
    args: argparse.Namespace,
    children: Children,
    tag: str,
    server: WebServer,
    accounts: list[int],
    peak_per_s: float,
    processes: list[Child],
    settled: Callable[[], bool],
) -> dict[str, float]:
    """Latency without a backlog: ``--http-paced-trades`` requests at ``--paced-share`` of the peak.

    The peak is the saturation run's trades/s (request -> deducted). The Python client sends on
    a fixed schedule (wrk 4 cannot pace), so a slow answer does not slow the offered load, and a
    request's latency counts from its scheduled instant.
    """
    from bench.httpload import TRADES_PATH

    if not args.http_paced_trades:
        return {}
    rate = max(args.paced_share * peak_per_s, 1.0)
    base_id = int(scalar("SELECT coalesce(max(id), 0) FROM trades_trade"))
    name = f"load-paced-{tag}"
    spec = replace(
        load_spec(args, server, accounts, args.http_paced_trades, name, TRADES_PATH), rate_per_s=rate
    )
    result, _, _ = http_load(children, None, spec, name, watch=processes)
    http_checked(result, args.http_paced_trades, server.web, f"{args.http_paced_trades} paced requests")
    wait_until(settled, timeout=args.timeout, what="paced trades placed over HTTP to settle")
    p50, p99, _ = percentiles(TRADE_TO_DEDUCTED, [base_id])
    relayed_p50, relayed_p99, _ = percentiles(TRADE_TO_RELAYED, [base_id])
    consumed_p50, consumed_p99, _ = percentiles(RELAYED_TO_DEDUCTED, [base_id])
    return {
        "rate_per_s": rate,
        "offered_per_s": result.per_s,
        "trades": result.requests,
        "request_p50_ms": result.percentile(0.5),
        "request_p99_ms": result.percentile(0.99),
        "p50_ms": p50,
        "p99_ms": p99,
        "relayed_p50_ms": relayed_p50,
        "relayed_p99_ms": relayed_p99,
        "relayed_to_deducted_p50_ms": consumed_p50,
        "relayed_to_deducted_p99_ms": consumed_p99,
    }


# --------------------------------------------------------------------------- the alternatives


@dataclass(frozen=True)
class AlternativeLeg:
    """How to run one alternative: its endpoint, and the processes that deduct (none: the no-op)."""

    path: str  # under /bench/ (bench/alternatives/api.py)
    app: str | None = None  # celery -A <app> worker: its deduction workers
    queue: str | None = None  # the queue those workers consume
    relay: bool = False  # manage.py celery_outbox_relay publishes its outbox
    what: str = ""


# In the order they run, after the exactly-once HTTP leg.
ALTERNATIVES: dict[str, AlternativeLeg] = {
    "best_practice_celery": AlternativeLeg(
        path="/bench/best-practice-celery/trades/",
        app="bench.alternatives.best_practice",
        queue="bench-best-practice",
        what="commit, then on_commit(delay): confirms, acks_late, reject_on_worker_lost, a quorum queue",
    ),
    "django_celery_outbox": AlternativeLeg(
        path="/bench/django-celery-outbox/trades/",
        app="bench.alternatives.outbox",
        queue="bench-outbox",
        relay=True,
        what="the trade and its outbox row in one transaction, manage.py celery_outbox_relay publishes",
    ),
    "noop_view": AlternativeLeg(
        path="/bench/noop/trades/",
        what="parse the same request, answer 201: no authentication, no database",
    ),
}
ALTERNATIVE_TABLES = [
    "bench_alternatives_deduction",
    "bench_alternatives_trade",
    "celery_outbox",
    "celery_outbox_dead_letter",
]
ALT_TRADE_TO_DEDUCTED = (
    "SELECT extract(epoch FROM min(d.created_at) - t.created_at) * 1000 AS ms "
    "FROM bench_alternatives_trade t JOIN bench_alternatives_deduction d ON d.trade_id = t.id "
    "WHERE t.id > %s GROUP BY t.id, t.created_at"
)


def alternative_line(alt: Alternative) -> str:
    """One line of an alternative's figures."""
    if alt.trades:
        books = (
            f"{alt.deducted} trades deducted by {alt.deductions} deductions ({alt.duplicates} duplicates), "
            f"{alt.left_in_queue} messages left in its queue"
            + (
                f", {alt.outbox_left} outbox rows left, {alt.outbox_dead_letters} outbox dead letters"
                if alt.outbox_left is not None
                else ""
            )
        )
        return (
            f"{alt.name} {alt.per_s:.1f}/s placed and deducted in {alt.seconds:.2f}s "
            f"({alt.request_per_s:.1f} requests/s answered), request p50 {alt.request_p50_ms:.0f} ms, "
            f"p99 {alt.request_p99_ms:.0f} ms; request->deducted p50 {alt.p50_ms or 0:.0f} ms, "
            f"p99 {alt.p99_ms or 0:.0f} ms; {alt.requests} requests, {alt.non_201} not 201; {books}"
        )
    return (
        f"{alt.name} {alt.request_per_s:.1f} requests/s answered in {alt.seconds:.2f}s, "
        f"request p50 {alt.request_p50_ms:.0f} ms, p99 {alt.request_p99_ms:.0f} ms; "
        f"{alt.requests} requests, {alt.non_201} not 201"
    )


def alternatives_reset() -> None:
    """Empty the alternatives' tables (database_reset's CASCADE does too: said here, not relied on)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {', '.join(ALTERNATIVE_TABLES)} RESTART IDENTITY CASCADE")


def alternative_start(
    args: argparse.Namespace, children: Children, name: str, leg: AlternativeLeg, tag: str
) -> tuple[list[Child], Child | None]:
    """Start W ``celery -A <its app> worker -c C`` (and its relay); return them once every worker consumes."""
    assert leg.app is not None and leg.queue is not None
    env = {**BENCH_SETTINGS, "PGAPPNAME": "bench-worker"}
    workers = [
        children.start(
            f"{name}-worker{i}-{tag}",
            celery_argv(
                leg.app,
                "worker",
                "-Q",
                leg.queue,
                "-n",
                f"bench-{name}{i}@%h",
                "-c",
                str(args.concurrency),
                "--without-mingle",
                "--without-gossip",
                loglevel=args.loglevel,
            ),
            env=env,
        )
        for i in range(1, args.workers + 1)
    ]
    relay = None
    if leg.relay:
        # As django-celery-outbox's README runs it, with its defaults (--batch-size 100,
        # --idle-time 1.0: it sleeps a second after each batch of fewer than 100 rows).
        relay = children.start(
            f"{name}-relay-{tag}",
            [sys.executable, "manage.py", "celery_outbox_relay"],
            env={**BENCH_SETTINGS, "PGAPPNAME": "bench-relay"},
        )
    wait_consumers([leg.queue], args.workers, [*workers, *([relay] if relay else [])])
    return workers, relay


def measure_alternative(
    args: argparse.Namespace,
    children: Children,
    tag: str,
    name: str,
    server: WebServer,
    wrk: str | None,
    client: str,
) -> Alternative:
    """An alternative through the repeat's web tier: ``--http-trades`` requests to its endpoint.

    Like ``measure_http``: the same accounts, API key, load generator and clients, a warm-up,
    then the clock from the first request until every trade is settled (its deduction
    committed); the no-op view's clock stops at the last answer. Each trade must be deducted;
    deductions beyond one per trade are counted as duplicates, not failed (at-least-once).
    """
    leg = ALTERNATIVES[name]
    total = args.http_trades
    accounts = database_reset()
    alternatives_reset()
    queues_reset()
    web = server.web
    workers, relay = alternative_start(args, children, name, leg, tag) if leg.app else ([], None)
    deducting = [*workers, *([relay] if relay else [])]
    processes = [web.child, *deducting]

    def settled_after(base_id: int, count: int) -> Callable[[], bool]:
        def settled() -> bool:
            check_alive(processes)
            done = scalar(
                "SELECT count(*) FROM bench_alternatives_trade WHERE id > %s AND status <> 'pending'",
                [base_id],
            )
            return int(done) >= count

        return settled

    warm = args.http_connections * 4
    warm_result, _, _ = http_load(
        children,
        wrk,
        load_spec(args, server, accounts, warm, f"load-warm-{name}-{tag}", leg.path),
        f"load-warm-{name}-{tag}",
        watch=processes,
    )
    http_checked(warm_result, warm, web, f"{name}: warm-up requests")
    if deducting:
        wait_until(settled_after(0, warm), timeout=args.timeout, what=f"{name}: warm-up trades")
    base_id = int(scalar("SELECT coalesce(max(id), 0) FROM bench_alternatives_trade"))
    balances_sql = "SELECT coalesce(sum(balance), 0) FROM beans_account"
    balances_before = int(scalar(balances_sql))
    watch = CpuWatch()
    result, load_cpu_s, load_pid = http_load(
        children,
        wrk,
        load_spec(args, server, accounts, total, f"load-{name}-{tag}", leg.path),
        f"load-{name}-{tag}",
        watch=processes,
        on_poll=watch.poll,
    )
    http_checked(result, total, web, f"{name}: {total} requests")
    if deducting:
        finished = wait_until(
            settled_after(base_id, total),
            timeout=args.timeout,
            what=f"{name}: {total} trades placed over HTTP to be deducted",
            on_poll=watch.poll,
        )
    else:
        finished = result.last_received
    groups = {"gunicorn": [web.child.pid], "load generator": [load_pid]}
    if workers:
        groups["worker"] = [worker.pid for worker in workers]
    if relay:
        groups["relay"] = [relay.pid]
    cpu_s = watch.attribute(groups, load_cpu_s)
    between = [base_id]
    counts = dict(
        scalar_rows(
            "SELECT status, count(*) FROM bench_alternatives_trade WHERE id > %s GROUP BY status", between
        )
    )
    trades = sum(counts.values())
    deductions, deducted = scalar_rows(
        "SELECT count(*), count(DISTINCT trade_id) FROM bench_alternatives_deduction WHERE trade_id > %s",
        between,
    )[0]
    p50 = p99 = None
    if deducting:
        p50, p99, _ = percentiles(ALT_TRADE_TO_DEDUCTED, between)
    children.stop(*deducting)
    # After the workers stopped (their unacknowledged messages are back in the queue): what a
    # redelivery would still apply a second time. And what the balances lost, once nothing runs.
    left = queue_depths([leg.queue])[leg.queue] if leg.queue else None
    beans_taken = balances_before - int(scalar(balances_sql))
    outbox_left = outbox_dead = None
    if leg.relay:
        outbox_left = int(scalar("SELECT count(*) FROM celery_outbox"))
        outbox_dead = int(scalar("SELECT count(*) FROM celery_outbox_dead_letter"))
    expected_trades = total if deducting else 0
    if (
        trades != expected_trades
        or int(deducted) != expected_trades
        or beans_taken != int(deductions) * BEANS
    ):
        raise RuntimeError(
            f"{name}: {total} requests answered 201, but the database holds {trades} trades after them "
            f"({counts}), {deducted} of them deducted by {deductions} deductions, and the balances "
            f"lost {beans_taken} beans ({BEANS} per deduction)"
        )
    seconds = finished - result.first_sent
    return Alternative(
        name=name,
        path=leg.path,
        requests=result.requests,
        statuses=result.statuses,
        non_201=result.non_201,
        seconds=seconds,
        per_s=(trades if deducting else result.requests) / seconds,
        request_per_s=result.per_s,
        request_p50_ms=result.percentile(0.5),
        request_p99_ms=result.percentile(0.99),
        request_max_ms=max(result.latencies_ms, default=0.0),
        p50_ms=p50,
        p99_ms=p99,
        trades=trades,
        deducted=int(deducted),
        rejected=counts.get("rejected", 0),
        deductions=int(deductions),
        duplicates=int(deductions) - int(deducted),
        beans_taken=beans_taken,
        left_in_queue=left,
        outbox_left=outbox_left,
        outbox_dead_letters=outbox_dead,
        client=client,
        cpu_s=cpu_s,
        db_sessions=watch.sessions[0],
        db_sessions_all_databases=watch.sessions[1],
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
    values["alternatives"] = alternatives_settings()
    return values


def alternatives_settings() -> dict[str, Any]:
    """What the alternatives run with: their Celery settings (both apps share them) and the library's version."""
    from importlib.metadata import version

    from bench.alternatives import best_practice

    conf = best_practice.app.conf
    queue = conf.task_queues[0]
    return {
        "broker_transport_options": conf.broker_transport_options,
        "task_acks_late": conf.task_acks_late,
        "task_reject_on_worker_lost": conf.task_reject_on_worker_lost,
        "worker_prefetch_multiplier": conf.worker_prefetch_multiplier,
        "queue_durable": queue.durable,
        "queue_arguments": queue.queue_arguments,
        "django_celery_outbox": version("django-celery-outbox"),
        "relay": "manage.py celery_outbox_relay, its defaults (--batch-size 100 --idle-time 1.0)",
    }


def alternative_runs(repeats: list[Repeat], name: str) -> list[Alternative]:
    return [r.alternatives[name] for r in repeats if name in r.alternatives]


def alternatives_summary(repeats: list[Repeat]) -> dict[str, Any]:
    """Per alternative: medians over the repeats, and the exactly-once HTTP leg's throughput over
    the alternative's, each ratio taken within one repeat (both ran minutes apart on one server)."""
    summary: dict[str, Any] = {}
    for name in ALTERNATIVES:
        runs = alternative_runs(repeats, name)
        if not runs:
            continue
        summary[f"http_{name}_per_s"] = median([a.per_s for a in runs])
        summary[f"ratio_http_vs_{name}"] = median(
            [r.http.per_s / r.alternatives[name].per_s for r in repeats if r.http and name in r.alternatives]
        )
        summary[f"http_{name}_request_p50_ms"] = median([a.request_p50_ms for a in runs])
        summary[f"http_{name}_request_p99_ms"] = median([a.request_p99_ms for a in runs])
        if name != "noop_view":
            summary[f"http_{name}_p50_ms"] = median([a.p50_ms for a in runs if a.p50_ms is not None])
            summary[f"http_{name}_p99_ms"] = median([a.p99_ms for a in runs if a.p99_ms is not None])
            summary[f"http_{name}_requests_per_s"] = median([a.request_per_s for a in runs])
            summary[f"http_{name}_deducted"] = sum(a.deducted for a in runs)
            summary[f"http_{name}_duplicates"] = sum(a.duplicates for a in runs)
            summary[f"http_{name}_left_in_queue"] = sum(a.left_in_queue or 0 for a in runs)
        summary[f"http_{name}_db_sessions_per_item"] = median(
            [a.db_sessions / (a.trades or a.requests) for a in runs]
        )
        summary[f"http_{name}_requests"] = sum(a.requests for a in runs)
        summary[f"http_{name}_non_201"] = sum(a.non_201 for a in runs)
    return summary


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
        # The latency goal is at half of peak: the paced run through HTTP (when there is one).
        **{
            f"http_paced_{figure}": median([h.paced[figure] for h in https if h.paced])
            for figure in PACED_FIGURES
        },
        "http_requests_per_s": median([h.request_per_s for h in https]),
        "http_requests": sum(h.requests for h in https) if https else None,
        "http_non_201": sum(h.non_201 for h in https) if https else None,
        "http_db_sessions_per_item": median([h.db_sessions / h.trades for h in https]),
        # The alternatives through the same web tier (bench/alternatives/), after the exactly-once leg.
        **alternatives_summary(repeats),
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
            # Per trade; the no-op view's per request.
            **{
                f"http_{name}": cpu_medians(
                    [(a.cpu_s, a.trades or a.requests) for a in alternative_runs(repeats, name)]
                )
                for name in ALTERNATIVES
                if alternative_runs(repeats, name)
            },
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
            "housekeeping_worker": args.housekeeping_worker,
            "http_paced_trades": args.http_paced_trades,
            "placement_batch": args.placement_batch,
            "batched_trades": args.batched_trades,
            "accounts": ACCOUNTS,
            "beans_per_trade": BEANS,
            "worker_loglevel": args.loglevel,
            "http": None
            if args.no_http
            else {
                "requests_per_leg": args.http_trades,
                "gunicorn_workers": args.http_workers,
                "gunicorn_threads": args.http_threads,
                "connections": args.http_connections,
                "client": https[0].client if https else None,
                "settings": BENCH_SETTINGS["DJANGO_SETTINGS_MODULE"],
                "celery_db_reuse_max": args.celery_db_reuse_max,
                "alternatives": args.alternatives,
            },
        },
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "settings": settings_snapshot(),
        "repeats": [asdict(r) for r in repeats],
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# (summary key, what it is, the goal's bound, whether the figure must be at least or at most it)
GOALS = [
    ("ratio_vs_baseline", "one trade per call vs baseline", 1.5, "min"),
    ("ratio_http_vs_best_practice_celery", "HTTP vs best-practice Celery", 3.0, "min"),
    ("ratio_http_vs_django_celery_outbox", "HTTP vs django-celery-outbox", 3.0, "min"),
    ("ratio_http_vs_noop_view", "HTTP vs no-op view", 0.5, "min"),
    ("http_paced_p99_ms", "HTTP request->deducted p99 at half of peak (ms)", 50.0, "max"),
    ("ratio_batched_placement_vs_baseline", "batched vs baseline", 4.0, "min"),
    ("ratio_batched_placement_vs_raw_amqp", "batched vs raw AMQP", 0.6, "min"),
    ("metrics_scrape_ratio_1m_vs_1k", "metrics scrape 1M vs 1k", 1.5, "max"),
    ("history_worst_ratio_10m_vs_10k", "slowest daily page, 10M vs 10k rows", 1.5, "max"),
]


def goal_lines(summary: dict[str, Any]) -> list[str]:
    """Each goal the run measured: its figure, its bound, and whether it is met."""
    lines = []
    for key, what, bound, kind in GOALS:
        value = summary.get(key)
        if value is None:
            continue
        met = value >= bound if kind == "min" else value <= bound
        sign = ">=" if kind == "min" else "<="
        lines.append(f"{what} {value:.2f} ({sign} {bound:g}: {'met' if met else 'NOT met'})")
    return lines


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
        f"N={p['trades']} trades, W={p['workers']} worker(s) x C={p['concurrency']}"
        f"{' + a housekeeping worker x 1' if p.get('housekeeping_worker') else ''}, "
        f"{p['producers']} producer processes, cpu_count={summary['cpu_count']}, "
        f"repeats={p['repeats']} (medians below)"
    )
    for i, r in enumerate(summary["repeats"], start=1):
        e, b, raw = r["exactly_once"], r["baseline"], r["raw_amqp"]
        raw_text = f" | raw {raw['per_s']:7.0f}/s" if raw else ""
        http_text = f" | http {r['http']['per_s']:7.1f}/s" if r.get("http") else ""
        http_text += "".join(f" | {name} {alt['per_s']:7.1f}/s" for name, alt in r["alternatives"].items())
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
            f"{summary['http_non_201']} not 201; {summary['http_db_sessions_per_item']:.2f} new database "
            f"sessions per trade"
        )
        if summary["http_paced_p99_ms"] is not None:
            print(
                f"               paced at {p['paced_share']:.0%} of its throughput "
                f"({summary['http_paced_rate_per_s']:.0f} requests/s, open loop, Python client): "
                f"request p50 {summary['http_paced_request_p50_ms']:.0f} ms, "
                f"p99 {summary['http_paced_request_p99_ms']:.0f} ms; request->deducted "
                f"p50 {summary['http_paced_p50_ms']:.0f} ms, p99 {summary['http_paced_p99_ms']:.0f} ms"
            )
            print(
                f"               of which placed -> relayed (confirmed, marked sent) "
                f"p50 {summary['http_paced_relayed_p50_ms']:.0f} ms, p99 {summary['http_paced_relayed_p99_ms']:.0f} ms; "
                f"relayed -> deducted p50 {summary['http_paced_relayed_to_deducted_p50_ms']:.0f} ms, "
                f"p99 {summary['http_paced_relayed_to_deducted_p99_ms']:.0f} ms"
            )
    if any(f"http_{name}_per_s" in summary for name in ALTERNATIVES):
        print(
            f"alternatives through the same web tier ({p['http']['requests_per_leg']} requests each, "
            f"the same clients; ratio = exactly-once through HTTP / the alternative, within each repeat):"
        )
    for name in ALTERNATIVES:
        if f"http_{name}_per_s" not in summary:
            continue
        ratio = summary[f"ratio_http_vs_{name}"]
        requests = (
            f"request p50 {summary[f'http_{name}_request_p50_ms']:.0f} ms, "
            f"p99 {summary[f'http_{name}_request_p99_ms']:.0f} ms"
        )
        if name == "noop_view":
            print(
                f"  {name:21s}: {summary[f'http_{name}_per_s']:9.1f} requests/s answered; {requests}; "
                f"ratio {ratio:.3f}"
            )
            continue
        print(
            f"  {name:21s}: {summary[f'http_{name}_per_s']:9.1f} trades/s placed and deducted "
            f"({summary[f'http_{name}_requests_per_s']:.1f} requests/s answered); ratio {ratio:.3f}"
        )
        print(
            f"  {'':21s}  {requests}; request->deducted p50 {summary[f'http_{name}_p50_ms']:.0f} ms, "
            f"p99 {summary[f'http_{name}_p99_ms']:.0f} ms; {summary[f'http_{name}_deducted']} deducted, "
            f"{summary[f'http_{name}_duplicates']} duplicates, {summary[f'http_{name}_non_201']} not 201; "
            f"{summary[f'http_{name}_db_sessions_per_item']:.2f} new database sessions per trade"
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
    for name in ALTERNATIVES:
        if summary.get(f"ratio_http_vs_{name}"):
            print(f"ratio http_exactly_once/{name} = {summary[f'ratio_http_vs_{name}']:.3f}")
    print("goals (README, Performance): " + "; ".join(goal_lines(summary)))
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
        "(bench/metrics_scrape.py, a database of its own; 0: skip)",
    )
    parser.add_argument("--metrics-scrapes", type=int, default=40, help="timed scrapes per size (median)")
    parser.add_argument(
        "--history-rows",
        type=int,
        default=10_000_000,
        help="time the daily pages and commands (admin lists, health page, /metrics, pipeline_status, a "
        "reconciler pass) with this many message-log rows against 10,000 (bench/history.py, a database of "
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
            if args.placement_batch > 1 and args.batched_trades:
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
            alternatives: dict[str, Alternative] = {}
            if not args.no_http:
                server = web_start(args, children, tag)
                try:
                    log(
                        f"repeat {r}/{args.repeats}: exactly-once through HTTP, {args.http_trades} requests "
                        f"POST /api/trades/ ({args.http_connections} clients, {client}; gunicorn "
                        f"{args.http_workers} x {args.http_threads})"
                    )
                    http = measure_http(args, children, tag, server, wrk, client)
                    log(
                        f"  HTTP {http.per_s:.1f}/s placed and deducted in {http.seconds:.2f}s "
                        f"({http.request_per_s:.1f} requests/s answered), request p50 {http.request_p50_ms:.0f} ms, "
                        f"p99 {http.request_p99_ms:.0f} ms; request->deducted p50 {http.p50_ms:.0f} ms, "
                        f"p99 {http.p99_ms:.0f} ms; {http.requests} requests, {http.non_201} not 201"
                    )
                    for what, size in http.batch_sizes.items():
                        log(f"  messages per {what}: mean {size['mean']:.1f}, max {size['max']:.0f}")
                    log(f"  {cpu_line(http.cpu_s, http.trades)}")
                    log(f"  {sessions_line(http.db_sessions, http.db_sessions_all_databases, http.trades)}")
                    for name in args.alternatives:
                        log(
                            f"repeat {r}/{args.repeats}: {name} through HTTP, {args.http_trades} requests "
                            f"POST {ALTERNATIVES[name].path} ({ALTERNATIVES[name].what})"
                        )
                        alt = alternatives[name] = measure_alternative(
                            args, children, tag, name, server, wrk, client
                        )
                        log(f"  {alternative_line(alt)}")
                        log(f"  {cpu_line(alt.cpu_s, alt.trades or alt.requests)}")
                        items = alt.trades or alt.requests
                        log(f"  {sessions_line(alt.db_sessions, alt.db_sessions_all_databases, items)}")
                finally:
                    children.stop(server.web.child)
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
                    alternatives=alternatives,
                )
            )
        summary = summarize(args, repeats)
        if args.metrics_scrape_rows:
            log(f"/metrics scrape: 1000 and {args.metrics_scrape_rows} message-log rows")
            summary.update(
                metrics_scrape.measure(1000, args.metrics_scrape_rows, scrapes=args.metrics_scrapes)
            )
            log(
                f"  /metrics {summary['metrics_scrape_ms_1k']:.1f} ms at 1k rows, "
                f"{summary['metrics_scrape_ms_1m']:.1f} ms at {args.metrics_scrape_rows}: "
                f"ratio {summary['metrics_scrape_ratio_1m_vs_1k']:.2f}"
            )
        if args.history_rows:
            log(f"history: the daily pages and commands at 10,000 and {args.history_rows:,} message-log rows")
            pages = history.measure(10_000, args.history_rows, rounds=args.history_rounds)
            summary["history_ratio_10m_vs_10k"] = {
                name: figures["ratio_10m_vs_10k"] for name, figures in pages["pages"].items()
            }
            summary["history_worst_ratio_10m_vs_10k"] = max(summary["history_ratio_10m_vs_10k"].values())
            for name, figures in pages["pages"].items():
                log(
                    f"  {name}: {figures['ms_10k']:.1f} ms at 10k rows, {figures['ms_10m']:.1f} ms at "
                    f"{args.history_rows:,}: ratio {figures['ratio_10m_vs_10k']:.2f}"
                )
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
