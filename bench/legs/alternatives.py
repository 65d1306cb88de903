"""The alternatives through HTTP (``bench/alternatives/``): the same trade, other ways of deducting it.

Right after the exactly-once HTTP leg, in this order, on the same gunicorn (one per repeat, shared
by its HTTP legs), the same API key, accounts, load generator and client count, ``--http-trades``
requests each: ``best_practice_celery`` (commit, then ``on_commit(delay)``; confirms, acks_late,
reject_on_worker_lost, a quorum queue; W ``celery -A bench.alternatives.best_practice worker -c
C``), ``django_celery_outbox`` (the trade and the library's outbox row in one transaction;
``manage.py celery_outbox_relay`` publishes; W ``celery -A bench.alternatives.outbox worker -c
C``) and ``noop_view`` (parses the same request and answers 201: no authentication, no database;
the web tier's ceiling). The clock runs until every trade is settled; each must be deducted, and
deductions beyond one per trade (an at-least-once redelivery applied twice) are counted and
reported, not failed. Every process runs with ``DJANGO_SETTINGS_MODULE=bench.settings``.
"""

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.common import (
    BEANS,
    BENCH_SETTINGS,
    Children,
    celery_argv,
    check_alive,
    database_reset,
    log,
    queue_depths,
    queues_reset,
    wait_consumers,
    wait_until,
)
from bench.figures import CpuWatch, cpu_line, latencies, sessions_line
from bench.web import WebServer, http_checked, http_load, load_spec, request_figures
from harness.database import rows, scalar
from harness.processes import Child


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


def measure(
    args: argparse.Namespace,
    children: Children,
    tag: str,
    name: str,
    server: WebServer,
    wrk: str | None,
    client: str,
) -> Alternative:
    """An alternative through the repeat's web tier: ``--http-trades`` requests to its endpoint.

    Like ``bench.legs.http.measure``: the same accounts, API key, load generator and clients, a warm-up,
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
        rows("SELECT status, count(*) FROM bench_alternatives_trade WHERE id > %s GROUP BY status", between)
    )
    trades = sum(counts.values())
    deductions, deducted = rows(
        "SELECT count(*), count(DISTINCT trade_id) FROM bench_alternatives_deduction WHERE trade_id > %s",
        between,
    )[0]
    latency = (
        latencies({"": ALT_TRADE_TO_DEDUCTED}, between) if deducting else {"p50_ms": None, "p99_ms": None}
    )
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
    alt = Alternative(
        name=name,
        path=leg.path,
        seconds=seconds,
        per_s=(trades if deducting else result.requests) / seconds,
        **request_figures(result),
        **latency,
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
    log(f"  {alternative_line(alt)}")
    items = alt.trades or alt.requests
    log(f"  {cpu_line(alt.cpu_s, items)}")
    log(f"  {sessions_line(alt.db_sessions, alt.db_sessions_all_databases, items)}")
    return alt


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
