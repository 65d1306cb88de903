"""Chaos soak: a seeded, randomized fault schedule under load, then a checker of I1-I10.

Usage (from the repository root; ``make chaos`` runs it)::

    .venv/bin/python -m chaos.run [--deductions N] [--seed S] [--tier ci|full] [--cluster] [--http]

What happens, Jepsen style:

1. **Setup.** A fresh database (``beans_chaos``), a private RabbitMQ vhost (``chaos``) and
   Redis database 11; 32 accounts (4 of them poor, so some trades are rejected for
   insufficient funds); 2 ``celery worker -c 2`` and one ``celery beat``, with short
   reconciler periods (as the integration tests use) and shorter deadlines (AMQP heartbeat
   5 s, idle in transaction 10 s: ``chaos.harness.PROCESS_ENV``). The first worker (and whichever
   replaces it) reaches RabbitMQ and PostgreSQL through silent proxies
   (``harness/proxies.py``) that live in this process for the whole run.
2. **Load.** Producer processes place N deductions through the HTTP API
   (``POST /api/trades/`` with the run's API key), paced at ``--rate`` per second, each with
   a unique ``Idempotency-Key``. With ``--http`` (the full tier's default) they go through
   the front door: the web tier as operators run it (gunicorn with
   ``project/gunicorn.conf.py``, ``harness.web.Gunicorn``, log ``web.log``), one keep-alive
   connection per producer and a timeout (``--http-timeout``); its database sessions are
   named ``chaos-producer-web``, so the nemesis terminates them with the producers'.
   Otherwise (the CI tier's default) through Django's test client, in process: the same
   API and ``trade_place``, without a web server. Every request is recorded: ok (2xx),
   refused (4xx, e.g. an unknown account, which a few requests ask for on purpose),
   unavailable (503, or a connection that could not be opened: nothing was written) or
   indeterminate (a 500, an exception, a timeout or a connection that broke, e.g. the
   database session killed mid-call: it may or may not have committed). A failed request is
   retried with the same key a few times, as a client would; the checker later finds its
   trade by the key.
3. **Nemesis.** Meanwhile a schedule drawn from the seed (``chaos/schedule.py``) alternates
   healthy periods and fault windows (full tier: healthy 20 s / fault 10-30 s; CI tier scaled
   down to healthy 5 s / fault 3-8 s): worker children and worker main processes SIGKILLed,
   warm shutdowns (SIGTERM) mid-batch, the relay loop killed at its fault points, the broker
   stopped (``rabbitmqctl stop_app``), PostgreSQL sessions terminated, Redis flushed (and
   restarted when nobody else uses it), sent messages published again straight to the queue,
   messages taken off the queue, poison messages, the proxied worker silently cut off from
   RabbitMQ or from PostgreSQL for 20-28 s (full tier 30-45 s; most often after it was made
   the relay's leader), and on the 3-node cluster the queue leader killed.
4. **Heal, drain, reconcile.** Everything is healed; trades placed after the heal must settle
   within a bound (I10); the pipeline drains; one reconciler pass runs; workers stop.
5. **Check** (``chaos/checker/``): I1-I10 against the database and the broker. Output: the
   seed, the schedule as it ran, the summary line ``attempted / ok / failed / indeterminate /
   lost / duplicated deliveries / duplicated effects``, the invariant table, and
   ``chaos-report.json`` in the working directory. Exit 0 only if every invariant holds.

A seed replays exactly the same schedule and load (``--seed``, ``make chaos SEED=...``): the
same faults at the same offsets with the same parameters; the processes' timing is real.
Every loop is bounded in count and time; the ``finally`` heals whatever is still broken
(partitions healed, broker app started, Redis restarted), stops every process it started,
closes the proxies and deletes the vhost (a vhost ``chaos-test<pid>`` left by a test run
that was killed is deleted at the start of the next run).
The database is kept for inspection (``--drop-database`` drops it). Logs: ``.run/chaos/``.
"""

import argparse
import json
import multiprocessing as mp
import os
import re
import secrets
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from chaos import checker
from chaos.harness import (
    PROCESS_ENV,
    Names,
    Pipeline,
    WorkerProxies,
    chaos_env,
    db_progress,
    log,
    say,
)
from chaos.load import (
    HTTP_TIMEOUT_S,
    LoadPlan,
    Target,
    _produce,
    _producer_init,
    load_plan,
    producer_jobs,
)
from chaos.nemesis import Nemesis
from chaos.schedule import (
    CLUSTER_FAULT_KINDS,
    DB_CLUSTER_FAULT_KINDS,
    FAULT_KINDS,
    TIERS,
    Fault,
    schedule_make,
)
from harness.broker_admin import broker_admin
from harness.database import database_migrated, scalar
from harness.environment import foreign
from harness.polling import eventually, sleep_until
from harness.processes import REPO, orphans
from harness.proxies import partition_drops_packets
from harness.rabbitmq import queue_counts
from harness.web import Gunicorn
from project.environment import broker_user, database_drop

ACCOUNTS = 32
POOR_ACCOUNTS = 4  # run out of beans mid-run: their later trades are rejected for insufficient funds
RICH_BALANCE = 10**12
POOR_BALANCE = 3_000
FULL_TIER_FROM = 50_000  # deductions: the full tier (and the cluster) by default from here on
RATE = 50.0  # requests per second: below what the pipeline drains on 2 shared cores under faults
# The run's API key: far above --rate, so that the rate limit never answers (it has tests of its own).
API_RATE_LIMIT_PER_S = 1_000_000


def vhosts_reap(names: Names, env: dict[str, str]) -> list[str]:
    """Delete this run's vhost if an earlier run left it, and those of killed test runs.

    ``tests/e2e/test_chaos.py`` runs with ``--instance test<pid>``: a vhost ``chaos-test<pid>``
    whose process is gone was left by a run killed before its ``finally``.
    """
    notes = []
    vhosts = broker_admin().vhosts()
    for vhost in [*({names.vhost} & set(vhosts)), *orphans(vhosts, r"chaos-test(\d+)")]:
        broker_admin().vhost_delete(vhost)
        notes.append(f"deleted vhost {vhost!r} left over by an earlier run")
    return notes


def api_key_in_process(seed: int) -> str:
    """The producers' API key when they call the API in process (the web tier makes its own)."""
    from django.db import connections

    from edge.services import api_key_create

    _, key = api_key_create(
        name=f"chaos-{seed}", scopes=["trades:write"], rate_limit_per_s=API_RATE_LIMIT_PER_S
    )
    connections.close_all()  # nothing of ours may be inherited by the forked producers
    return key


def accounts_open() -> tuple[list[int], dict[int, int]]:
    """Open the run's accounts through the service; return their ids and opening balances."""
    from django.db import connections

    from beans.services import account_create

    balances = {}
    for n in range(ACCOUNTS):
        balance = POOR_BALANCE if n < POOR_ACCOUNTS else RICH_BALANCE
        balances[account_create(owner=f"chaos-{n}", balance=balance).pk] = balance
    connections.close_all()  # nothing of ours may be inherited by the forked producers
    return sorted(balances), balances


# --------------------------------------------------------------------------- the run


@dataclass
class Outcome:
    """Everything the report needs besides the checker's verdict."""

    requests: list[checker.Request] = field(default_factory=list)
    details: list[str] = field(default_factory=list)  # what each request got, for the report's examples
    liveness: checker.Liveness = field(default_factory=checker.Liveness)
    timings: dict[str, float] = field(default_factory=dict)
    reconcile: list[dict[str, Any]] = field(default_factory=list)
    surprises: list[str] = field(default_factory=list)


def tier_of(args: argparse.Namespace) -> str:
    return str(args.tier or ("full" if args.deductions >= FULL_TIER_FROM else "ci"))


def parser_make() -> argparse.ArgumentParser:
    """The run's options (``parse_args`` checks them and fills in the defaults that depend on others)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--deductions", type=int, default=10_000, help="requests to place (default 10,000: CI tier)"
    )
    parser.add_argument("--seed", type=int, help="seed of the schedule and the load (default: a fresh one)")
    parser.add_argument(
        "--tier", choices=sorted(TIERS), help=f"cadence (default: full from {FULL_TIER_FROM:,})"
    )
    parser.add_argument(
        "--rate", type=float, default=RATE, help="requests per second, all producers together"
    )
    parser.add_argument("--producers", type=int, default=3, help="producer processes")
    parser.add_argument("--workers", type=int, default=2, help="celery workers (each -c CONCURRENCY)")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument(
        "--cluster",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run on a private 3-node RabbitMQ cluster and kill the queue leader (default: full tier only)",
    )
    parser.add_argument(
        "--pg-cluster",
        action="store_true",
        help="run on a private 3-node PostgreSQL cluster (Patroni, synchronous replication; "
        "python -m harness.postgres_cluster) and kill the database primary (db_primary_kill)",
    )
    parser.add_argument(
        "--http",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="producers POST to the real web tier (gunicorn) over HTTP, not through Django's test "
        "client in process (default: full tier only)",
    )
    parser.add_argument(
        "--http-timeout",
        type=float,
        default=HTTP_TIMEOUT_S,
        metavar="S",
        help=f"with --http, the client's timeout per connect, send and read (default {HTTP_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--redis-restart",
        choices=["auto", "always", "never"],
        default="auto",
        help="restart redis-server in the Redis fault: auto = only when no one else is connected",
    )
    parser.add_argument("--instance", default="", help="suffix of the database, vhost and log directory")
    parser.add_argument("--drop-database", action="store_true", help="drop the run's database at the end")
    parser.add_argument(
        "--schedule-only", action="store_true", help="print the schedule of the seed and exit"
    )
    parser.add_argument("--report", default="chaos-report.json", help="where to write the JSON report")
    parser.add_argument(
        "--check-only",
        metavar="REPORT",
        help="run only the checker again, on the database kept by the run that wrote REPORT",
    )
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = parser_make()
    args = parser.parse_args(argv)
    if args.deductions < 100:
        parser.error("--deductions must be at least 100")
    if args.rate <= 0 or args.producers <= 0 or args.workers <= 0 or args.concurrency <= 0:
        parser.error("--rate, --producers, --workers and --concurrency must be positive")
    if not re.fullmatch(r"[a-z0-9_]{0,30}", args.instance):
        parser.error("--instance: lower-case letters, digits and _ only")
    if args.seed is None:
        args.seed = secrets.randbelow(10**9)
    if args.http_timeout <= 0:
        parser.error("--http-timeout must be positive")
    if args.cluster is None:
        args.cluster = tier_of(args) == "full"
    if args.http is None:
        args.http = tier_of(args) == "full"
    return args


def planned(args: argparse.Namespace) -> tuple[int, int, float, list[Fault]]:
    """(load requests, probe requests, load seconds, schedule): all from the arguments alone."""
    probe = max(50, min(1000, args.deductions // 20))
    load = args.deductions - probe
    duration = load / args.rate
    kinds = CLUSTER_FAULT_KINDS if args.cluster else FAULT_KINDS
    if args.pg_cluster:
        kinds = (*kinds, *DB_CLUSTER_FAULT_KINDS)
    return (
        load,
        probe,
        duration,
        schedule_make(seed=args.seed, duration_s=duration, cadence=TIERS[tier_of(args)], kinds=kinds),
    )


def replay_command(args: argparse.Namespace) -> str:
    extra = []
    if args.rate != RATE:
        extra.append(f"--rate {args.rate:g}")
    if args.tier:
        extra.append(f"--tier {args.tier}")
    if args.cluster != (tier_of(args) == "full"):
        extra.append("--cluster" if args.cluster else "--no-cluster")
    if args.pg_cluster:
        extra.append("--pg-cluster")
    if args.http != (tier_of(args) == "full"):
        extra.append("--http" if args.http else "--no-http")
    if args.http and args.http_timeout != HTTP_TIMEOUT_S:
        extra.append(f"--http-timeout {args.http_timeout:g}")
    if extra:
        return f".venv/bin/python -m chaos.run --deductions {args.deductions} --seed {args.seed} {' '.join(extra)}"
    return f"make chaos N={args.deductions} SEED={args.seed}"


# The deadlines the run shortens (harness.PROCESS_ENV), printed at the start and in the report.
DEADLINES = (
    "RELIABILITY_BROKER_HEARTBEAT_S",
    "RELIABILITY_RELAY_LEADER_FAIL_S",
    "RELIABILITY_RELAY_CLAIM_S",
    "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_S",
    "DATABASE_TCP_USER_TIMEOUT_MS",
)


def deadlines_line() -> str:
    return ", ".join(f"{key}={PROCESS_ENV[key]}" for key in DEADLINES)


def print_partitions(partitions: list[dict[str, Any]]) -> None:
    """One line per partition fault: how long it lasted and what it cost."""
    if not partitions:
        return
    say(f"partitions (the proxied worker cut off, silent drop; deadlines {deadlines_line()}):")
    say(f"{'#':>3} {'side':<9} {'worker':<11} {'lasted':>7} {'leader':>6} {'lead moved':>10} "
        f"{'consumers dropped':>17} {'sessions ended':>14} {'in tx ended':>11} {'rejoined':>8}")  # fmt: skip

    def secs(value: Any) -> str:
        return "-" if value is None else f"{value:.1f}s"

    for record in partitions:
        ended = (
            f"{record['sessions_ended_by_server']}/{record['sessions_at_start']}"
            if record["side"] == "database"
            else "-"
        )
        say(
            f"{record['fault']:>3} {record['side']:<9} {record['worker']:<11} {secs(record['lasted_s']):>7} "
            f"{'yes' if record['relay_leader'] else 'no':>6} {secs(record['lead_moved_after_s']):>10} "
            f"{secs(record['broker_dropped_consumers_after_s']):>17} {ended:>14} "
            f"{secs(record['in_transaction_ended_after_s']):>11} {secs(record['rejoined_after_heal_s']):>8}"
        )
    say("(seconds after the partition began; rejoined: seconds after the heal)")
    say()


def print_schedule(faults: list[Fault]) -> None:
    say(f"{'#':>3} {'planned':>8} {'ran':>15} {'fault':<18} what happened")
    for fault in faults:
        ran = (
            f"{fault.started_s:6.1f}-{fault.healed_s:6.1f}s"
            if fault.started_s is not None and fault.healed_s is not None
            else "not run"
        )
        params = json.dumps(fault.params, separators=(",", ":"))
        notes = "; ".join(fault.notes) if fault.notes else params
        say(f"{fault.index:>3} {fault.at_s:7.1f}s {ran:>15} {fault.kind:<18} {notes}")


def run_load_and_faults(
    args: argparse.Namespace,
    plan: LoadPlan,
    faults: list[Fault],
    load: int,
    nemesis: Nemesis,
    outcome: Outcome,
    target: Target,
) -> None:
    """Place the load while the schedule runs, and record every request."""
    from django.db import connections

    duration = load / args.rate
    load_deadline_s = duration * 1.5 + 120  # producers stop here even if behind
    connections.close_all()
    pool = mp.get_context("fork").Pool(args.producers, initializer=_producer_init)
    try:
        t0_wall, t0 = time.time() + 1.0, time.monotonic() + 1.0
        jobs = producer_jobs(
            plan.items[:load],
            producers=args.producers,
            start_at=t0_wall,
            rate=args.rate,
            deadline=t0_wall + load_deadline_s,
            target=target,
        )
        pending = pool.map_async(_produce, jobs)
        log(f"load: {load} requests at {args.rate:g}/s over ~{duration:.0f}s; {len(faults)} faults planned")
        for fault in faults:
            start = t0 + fault.at_s
            if start > t0 + load_deadline_s:
                fault.notes.append("skipped: past the load's deadline")
                continue
            sleep_until(start)
            fault.started_s = round(time.monotonic() - t0, 1)
            log(
                f"t={fault.started_s:6.1f}s fault #{fault.index} {fault.kind} for {fault.duration_s}s | {db_progress()}"
            )
            try:
                nemesis.run(fault, until=time.monotonic() + fault.duration_s)
            except Exception as exc:  # noqa: BLE001 - a nemesis step that failed is reported, the run goes on
                fault.notes.append(f"nemesis error: {type(exc).__name__}: {exc}")
            fault.notes.extend(nemesis.heal_all())
            fault.notes.extend(note for note in nemesis.pipeline.replenish() if "exited by itself" in note)
            fault.healed_s = round(time.monotonic() - t0, 1)
            log(f"t={fault.healed_s:6.1f}s healed #{fault.index}: {'; '.join(fault.notes)}")
        remaining = t0 + load_deadline_s + 30 - time.monotonic()
        results = [row for part in pending.get(timeout=max(remaining, 30)) for row in part]
        outcome.timings["load_s"] = round(time.monotonic() - t0, 1)
        pool.close()
    finally:
        pool.terminate()
        pool.join()
    for idx, result, attempts, detail in sorted(results):
        item = plan.items[idx]
        outcome.requests.append(
            checker.Request(item.key, item.account, item.beans, result, attempts, plan.phase[idx])
        )
        outcome.details.append(detail)


def probe_liveness(
    args: argparse.Namespace, plan: LoadPlan, load: int, outcome: Outcome, target: Target
) -> None:
    """I10: place the last requests after the heal; they must settle within the bound."""
    from django.db import connections

    items = plan.items[load:]
    live = outcome.liveness
    settled_sql = "SELECT count(*) FROM trades_trade WHERE status <> 'pending'"
    settled_at_heal = int(scalar(settled_sql))
    live.backlog_at_heal = int(scalar("SELECT count(*) FROM trades_trade")) - settled_at_heal
    # The probe's trades queue behind whatever the faults left: the bound grows with that
    # backlog (as if it drained at only 10 per second), so it measures a stuck pipeline, not
    # a loaded machine.
    bound = (120.0 if tier_of(args) == "ci" else 300.0) + live.backlog_at_heal / 10
    connections.close_all()
    pool = mp.get_context("fork").Pool(args.producers, initializer=_producer_init)
    began = time.monotonic()
    try:
        start = time.time() + 0.2
        jobs = producer_jobs(
            items,
            producers=args.producers,
            start_at=start,
            rate=args.rate,
            deadline=start + bound,
            target=target,
        )
        results = [row for part in pool.map_async(_produce, jobs).get(timeout=bound + 60) for row in part]
        pool.close()
    finally:
        pool.terminate()
        pool.join()
    keys = []
    for idx, result, attempts, detail in sorted(results):
        item = plan.items[idx]
        outcome.requests.append(
            checker.Request(item.key, item.account, item.beans, result, attempts, "probe")
        )
        outcome.details.append(detail)
        if result == "ok":
            keys.append(item.key)
    live.probe_ok, live.bound_s = len(keys), round(bound, 1)

    def settled() -> int:
        return int(
            scalar(
                "SELECT count(*) FROM trades_trade WHERE idempotency_key = ANY(%s) AND status <> 'pending'",
                [keys],
            )
        )

    eventually(lambda: settled() >= len(keys), timeout=bound - (time.monotonic() - began))
    live.probe_settled = settled()
    elapsed = time.monotonic() - began
    if live.probe_settled >= len(keys) and keys:
        live.settle_s = round(elapsed, 1)
    live.settled_per_s_after_heal = round(
        (int(scalar(settled_sql)) - settled_at_heal) / max(elapsed, 0.001), 1
    )
    outcome.timings["probe_s"] = round(elapsed, 1)


def drain(bound: float, *, with_beat: bool = True) -> bool:
    """Wait until no trade or outbox row is pending and the queues are empty."""

    def drained() -> bool:
        busy = scalar(
            "SELECT EXISTS (SELECT 1 FROM trades_trade WHERE status = 'pending') "
            "OR EXISTS (SELECT 1 FROM reliability_outboxmessage WHERE status = 'pending')"
        )
        if busy:
            return False
        counts = queue_counts()
        if with_beat:
            counts.pop("housekeeping", None)  # beat keeps sending its periodic tasks
        return all(count == 0 for count in counts.values())

    return eventually(drained, timeout=bound, interval=1.0)


def heal_drain_reconcile(
    args: argparse.Namespace, pipeline: Pipeline, nemesis: Nemesis, outcome: Outcome
) -> None:
    from reliability.ops.reconciler import reconcile_all

    live = outcome.liveness
    bound = max(180.0, args.deductions / 100)
    began = time.monotonic()
    live.drained = drain(bound)
    live.drain_s = round(time.monotonic() - began, 1)
    log(f"drained: {live.drained} in {live.drain_s}s | {db_progress()}")
    runs = reconcile_all()
    outcome.reconcile = [
        {
            "database": run.database,
            "outbox_relayed": run.outbox_relayed,
            "tail_gaps_found": run.tail_gaps_found,
            "republished": run.republished,
            "not_in_outbox": run.not_in_outbox,
            "escalated": run.escalated,
            "gaps_open": run.gaps_open,
        }
        for run in runs
    ]
    log(f"one reconciler pass: {outcome.reconcile}")
    if any(run.republished or run.outbox_relayed or run.tail_gaps_found for run in runs):
        live.drained = drain(60.0) and live.drained
    # Quiesce: beat first (it keeps sending periodic tasks), then the workers, once idle.
    if pipeline.beat is not None:
        pipeline.beat.stop(timeout=15)
    drain(30.0, with_beat=False)
    for worker in [*pipeline.workers]:
        worker.stop(timeout=30)
    # Not a violation (this harness restarts it, as a supervisor would), but worth a look.
    outcome.surprises.extend(f"a worker exited without the nemesis: {note}" for note in pipeline.unexpected)


def summary_line(c: dict[str, int]) -> str:
    """The Jepsen-style line of ../shared/reliability.md."""
    return (
        f"{c['attempted']} attempted / {c['ok']} ok / {c['failed']} failed / {c['indeterminate']} indeterminate / "
        f"{c['lost']} lost / {c['duplicated_deliveries']} duplicated deliveries / "
        f"{c['duplicated_effects']} duplicated effects"
    )


def print_verdict(verdict: checker.Verdict) -> None:
    say(summary_line(verdict.counts))
    say()
    say(f"{'':4} {'':6} invariant")
    for name, what in checker.INVARIANTS:
        problems = verdict.violations[name]
        say(
            f"{name:4} {'PASS' if not problems else 'FAIL':6} {what}"
            + (f"  ({len(problems)} violations)" if problems else "")
        )
        for problem in problems[:5]:
            say(f"{'':12}- {problem}")


def on_cluster(run: "Run") -> bool:
    """Whether the run's broker is the private cluster (its URL lists several nodes)."""
    return ";" in run.pipeline.env.get("CELERY_BROKER_URL", "")


def report(
    run: "Run", faults: list[Fault], verdict: checker.Verdict, initial: dict[int, int], history: Path
) -> dict[str, Any]:
    """Print the run's report (``report_say``) and return its JSON (``report_json``)."""
    answers: dict[str, int] = {}
    for detail in run.outcome.details:
        for answer in detail.split():
            answers[answer] = answers.get(answer, 0) + 1
    elapsed = report_say(run, faults, verdict, answers)
    return report_json(run, faults, verdict, answers, initial, history, elapsed)


def report_say(run: "Run", faults: list[Fault], verdict: checker.Verdict, answers: dict[str, int]) -> float:
    """Print the run's report: what ran, what the clients got, the invariants; return the seconds it took."""
    args = run.args
    tier = tier_of(args)
    say()
    say("=" * 100)
    say(f"seed {args.seed}, tier {tier} ({TIERS[tier].describe()}), {args.deductions} deductions at {args.rate:g}/s, "
        f"{'3-node cluster' if on_cluster(run) else 'single RabbitMQ node'}, "
        f"{'3-node PostgreSQL cluster' if args.pg_cluster else 'single PostgreSQL node'}, {producer_kind(args)}")  # fmt: skip
    say(f"replay: {replay_command(args)}")
    say()
    say("schedule (seconds after the load started):")
    print_schedule(faults)
    say()
    print_partitions(run.nemesis.partitions)
    print_counts(run.outcome, verdict.counts, answers)
    say()
    print_verdict(verdict)
    elapsed = time.monotonic() - run.started
    say()
    say(
        f"{'OK: every invariant holds' if verdict.passed else 'VIOLATIONS: see above'}; {elapsed:.0f}s in all"
    )
    say(f"logs: {run.pipeline.run_dir.relative_to(REPO)}/")
    say("=" * 100)
    return elapsed


def print_counts(outcome: Outcome, c: dict[str, int], answers: dict[str, int]) -> None:
    """What the clients got, how the trades ended, and how the pipeline recovered."""
    say(
        "client answers (per trade and attempt; a batch's answer counts for each of its trades): "
        f"{dict(sorted(answers.items(), key=lambda kv: -kv[1]))}"
    )
    batched = [request.key for request in outcome.requests if "/" in request.key]
    say(
        f"placed in batches: {len(batched)} trades in {len({key.rsplit('/', 1)[0] for key in batched})} "
        "requests to /api/trades/batch/; the others one per request"
    )
    say(
        f"indeterminate resolved by Idempotency-Key: {c['indeterminate_committed']} committed, "
        f"{c['indeterminate'] - c['indeterminate_committed']} not; retried requests {c['retried']}; "
        f"refused {c['refused']}, unavailable {c['unavailable']}, not attempted {c['not_attempted']}"
    )
    say(
        f"trades {c['trades']}: {c['deducted']} deducted, {c['rejected_for_funds']} rejected for funds; "
        f"dead letters {c['dead_letters']} ({c['dead_letters_explained']} injected poison, "
        f"{c['dead_letters_expired_periodic']} expired periodic tasks); "
        f"duplicates published {c['duplicated_publishes_injected']}; messages removed {c['messages_removed']}; "
        f"gaps found {c['gaps_found']}, healed {c['gaps_healed']}"
    )
    live = outcome.liveness
    say(
        f"liveness: backlog at the last heal {live.backlog_at_heal} trades, then {live.settled_per_s_after_heal} "
        f"settled/s; {live.probe_settled}/{live.probe_ok} trades placed after the heal settled "
        f"(in {live.settle_s}s, bound {live.bound_s:.0f}s); drained {live.drained} in {live.drain_s}s"
    )
    for surprise in outcome.surprises:
        say(f"noticed: {surprise}")


def report_json(
    run: "Run",
    faults: list[Fault],
    verdict: checker.Verdict,
    answers: dict[str, int],
    initial: dict[int, int],
    history: Path,
    elapsed: float,
) -> dict[str, Any]:
    """The run's report as ``chaos-report.json`` holds it."""
    args, outcome, injected, c = run.args, run.outcome, run.nemesis.injected, verdict.counts
    tier = tier_of(args)
    return {
        "seed": args.seed,
        "tier": tier,
        "cadence": asdict(TIERS[tier]),
        "deductions": args.deductions,
        "rate_per_s": args.rate,
        "cluster": on_cluster(run),
        "pg_cluster": args.pg_cluster,
        "producers": args.producers,
        "producer_kind": producer_kind(args),
        "http": args.http,
        "workers": args.workers,
        "concurrency": args.concurrency,
        **{
            key: c[key]
            for key in ("attempted", "ok", "failed", "indeterminate", "lost", "duplicated_effects")
        },
        "duplicated_deliveries": c["duplicated_deliveries"],
        "summary": summary_line(c),
        "invariants": verdict.invariants,
        "violations": {name: problems[: checker.EXAMPLES] for name, problems in verdict.violations.items()},
        "violation_counts": {name: len(problems) for name, problems in verdict.violations.items()},
        "counts": c,
        "client_answers": answers,
        "liveness": asdict(outcome.liveness),
        "reconcile": outcome.reconcile,
        "surprises": outcome.surprises,
        "timings": {**outcome.timings, "total_s": round(elapsed, 1)},
        "schedule": [fault.as_json() for fault in faults],
        "partitions": run.nemesis.partitions,
        "deadlines": {key: value for key, value in PROCESS_ENV.items() if key in DEADLINES},
        "injected": {
            "poison": injected.poison,
            "removed": sorted(injected.removed),
            "duplicates_published": injected.duplicates_published,
        },
        "replay": replay_command(args),
        "database": Names(args.instance).db,
        "instance": args.instance,
        "initial_balances": initial,
        "history": str(history.relative_to(REPO)),
        "logs": sorted(
            [*run.pipeline.log_paths(), *([str(run.web.child.log_path.relative_to(REPO))] if run.web else [])]
        ),
        "passed": verdict.passed,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def producer_kind(args: argparse.Namespace) -> str:
    if args.http:
        return (
            f"{args.producers} producer processes over HTTP to gunicorn "
            f"(keep-alive, timeout {args.http_timeout:g}s)"
        )
    return f"{args.producers} producer processes through Django's test client, in process"


def web_start(args: argparse.Namespace, web: Gunicorn) -> Target:
    """Start the web tier and make the producers' key with ``manage.py api_keys``, as an operator would."""
    log(f"starting the web tier (gunicorn, log {web.child.log_path.relative_to(REPO)})")
    web.wait_answering()
    key = web.api_key(f"chaos-{args.seed}", "trades:write", rate_limit_per_s=API_RATE_LIMIT_PER_S)
    log(f"web tier up at {web.url()}; producers POST over HTTP (timeout {args.http_timeout:g}s)")
    return Target(api_key=key, url=web.url(), timeout_s=args.http_timeout)


def history_write(path: Path, outcome: Outcome) -> None:
    """Every request and what it got, one JSON line each: the record the checker judged."""
    with path.open("w") as history:
        for request, answers in zip(outcome.requests, outcome.details, strict=True):
            history.write(json.dumps({**request._asdict(), "answers": answers}) + "\n")


def check_only(args: argparse.Namespace) -> int:
    """Check a kept database again against the history and report of its run (queues not read)."""
    saved = json.loads(Path(args.check_only).read_text())
    names = Names(saved.get("instance", ""))
    os.chdir(REPO)
    for key in [key for key in os.environ if foreign(key)]:
        del os.environ[key]
    os.environ.update(chaos_env(names, names.broker_url))
    import django

    django.setup()
    fields = set(checker.Request._fields)
    requests = [
        checker.Request(**{k: v for k, v in json.loads(line).items() if k in fields})
        for line in (REPO / saved["history"]).read_text().splitlines()
    ]
    injected = checker.Injected(
        poison=saved["injected"]["poison"],
        removed=set(saved["injected"]["removed"]),
        duplicates_published=saved["injected"]["duplicates_published"],
    )
    live = checker.Liveness(**saved["liveness"])
    initial = {int(account): balance for account, balance in saved["initial_balances"].items()}
    snapshot = checker.snapshot_collect(initial_balances=initial, queues={})
    verdict = checker.check(snapshot, requests, injected, live)
    say(f"database {names.db} checked again against {saved['history']} (seed {saved['seed']}); ")
    say("queues not read: the run's vhost is gone")
    say()
    print_verdict(verdict)
    return 0 if verdict.passed else 1


def pg_cluster_up() -> Any:
    """Start a private Patroni cluster and make its multi-host URL this run's DATABASE_URL.

    Before the run's environment is made: the run's database is then created on the cluster, and
    every process it starts (web, workers, beat, producers) connects through that URL.
    """
    from harness.postgres_cluster import PostgresCluster

    PostgresCluster.reap_stale()
    cluster = PostgresCluster.private()
    log("starting a private 3-node PostgreSQL cluster (Patroni, synchronous replication)")
    try:
        os.environ["DATABASE_URL"] = cluster.up()
    except BaseException:
        cluster.down()
        raise
    log(f"database cluster up: {os.environ['DATABASE_URL']}")
    return cluster


@dataclass
class Run:
    """What the steps of one run share, and what ``cleanup`` undoes however the run ended."""

    args: argparse.Namespace
    names: Names
    env: dict[str, str]
    pipeline: Pipeline
    nemesis: Nemesis
    started: float  # monotonic
    result: dict[str, Any]  # what chaos-report.json says if the run ends before its report
    outcome: Outcome = field(default_factory=Outcome)
    pg_cluster: Any = None  # harness.postgres_cluster.PostgresCluster with --pg-cluster
    cluster: Any = None  # harness.rabbitmq_cluster.RabbitCluster with --cluster, started or not
    vhost_made: bool = False
    proxies: WorkerProxies | None = None
    web: Gunicorn | None = None


def run_make(args: argparse.Namespace) -> Run:
    """A clean log directory, the run's environment made this process's own (on a private
    PostgreSQL cluster with ``--pg-cluster``), its worker pool and its nemesis."""
    names = Names(args.instance)
    names.run_dir.mkdir(parents=True, exist_ok=True)
    for stale in names.run_dir.iterdir():
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink()
    os.chdir(REPO)
    pg_cluster = pg_cluster_up() if args.pg_cluster else None
    env = chaos_env(names, names.broker_url)
    if args.pg_cluster:
        # The library's default requeue pause, not the soak's 0.05 s: the setting the full tier on
        # a cluster was measured with. It was needed then (at 0.05 s a failover spent a message's
        # 20 deliveries and the broker dead-lettered it); deliveries now wait for the database
        # instead, and the failover tests run at 0.05 s (README, "A delivery that fails because
        # the database is away waits for it").
        env["RELIABILITY_REQUEUE_PAUSE_MAX_S"] = "5.0"
    # Settings read the environment once: it must be ours before django.setup().
    for key in [key for key in os.environ if foreign(key)]:
        del os.environ[key]
    os.environ.update(env)
    pipeline = Pipeline(env=env, run_dir=names.run_dir, workers=args.workers, concurrency=args.concurrency)
    nemesis = Nemesis(pipeline=pipeline, names=names, env=env, args=args)
    nemesis.pg_cluster = pg_cluster
    result = {"seed": args.seed, "tier": tier_of(args), "deductions": args.deductions, "invariants": {}}
    return Run(args, names, env, pipeline, nemesis, time.monotonic(), result, pg_cluster=pg_cluster)


def setup(run: Run, *, load: int, probe: int) -> tuple[Target, dict[int, int], LoadPlan]:
    """Step 1: broker, proxies, database, accounts, the producers' target, workers and beat.

    Return the target, the accounts' opening balances and the load's plan.
    """
    import django

    django.setup()
    broker_up(run)
    proxies_start(run)
    initial = database_ready(run)
    target = target_make(run)
    plan = load_plan(seed=run.args.seed, load=load, probe=probe, accounts=run.nemesis.accounts)
    import trades.services  # noqa: F401 - imported before any fork: one version of the code

    workers_start(run)
    run.outcome.timings["setup_s"] = round(time.monotonic() - run.started, 1)
    return target, initial, plan


def broker_up(run: Run) -> None:
    """The run's broker: a private 3-node cluster (``--cluster``; skipped, with the reason, when it
    cannot start), else a vhost of the run's own on the system node."""
    from celery import current_app

    names, env, nemesis = run.names, run.env, run.nemesis
    if run.args.cluster:
        from harness.rabbitmq_cluster import RabbitCluster

        RabbitCluster.reap_stale()
        run.cluster = RabbitCluster.private()
        log("starting a private 3-node RabbitMQ cluster")
        try:
            urls = run.cluster.up()
        except Exception as exc:  # noqa: BLE001 - skipped with the reason, as the brief of the tier says
            run.result["cluster_skipped"] = f"{type(exc).__name__}: {exc}"
            log(
                f"SKIPPING THE CLUSTER: it could not start ({exc}); running on the system node, "
                "the leader-kill faults are skipped"
            )
        else:
            nemesis.cluster = run.cluster
            env["CELERY_BROKER_URL"] = os.environ["CELERY_BROKER_URL"] = urls
            current_app.conf.broker_url = urls
            log(f"cluster up: {urls}")
    if nemesis.cluster is None:
        for note in vhosts_reap(names, env):
            log(note)
        run.vhost_made = True
        broker_admin().vhost_add(names.vhost)
        broker_admin().permissions_set(names.vhost, broker_user(), ".*", ".*", ".*")


def proxies_start(run: Run) -> None:
    """The silent proxies the first worker (and whichever replaces it) reaches the broker and the database through."""
    proxies = WorkerProxies(
        broker_url=run.env["CELERY_BROKER_URL"],
        database_url=run.names.database_url,
        drop_database_packets=partition_drops_packets(),
    ).start()
    run.proxies = run.nemesis.proxies = proxies
    run.pipeline.proxied_env = proxies.env()
    log(
        f"the first worker reaches RabbitMQ ({len(proxies.sides['broker'])} node(s)) and PostgreSQL through "
        "silent proxies"
        + (" (the database's with iptables drops)" if proxies.drop_database_packets else "")
        + f"; deadlines {deadlines_line()}"
    )


def database_ready(run: Run) -> dict[int, int]:
    """The run's database made and migrated, the broker's topology declared, the leases of an
    earlier run cleared, and the accounts opened; return their opening balances by id."""
    from reliability.ids import message_id_new
    from reliability.produce.publisher import publisher

    log(f"creating database {run.names.db} and running migrations")
    database_migrated(run.names.database_url, run.env)
    publisher().close()
    publisher().topology_declare()
    publisher().close()
    run.nemesis._redis().flushdb()  # leases left by an earlier run
    message_id_new()  # the first lease after a flush waits a TTL: now, not when the load starts
    accounts, initial = accounts_open()
    run.nemesis.accounts = accounts
    return initial


def target_make(run: Run) -> Target:
    """Where the producers send: the web tier over HTTP (``--http``), else the API in process."""
    if not run.args.http:
        return Target(api_key=api_key_in_process(run.args.seed))
    # Its own database sessions are named as the producers' (pg_terminate faults end them too).
    run.web = Gunicorn(
        {**run.env, "PGAPPNAME": "chaos-producer-web"},
        log_path=run.names.run_dir / "web.log",
        workers=2,
        threads=2,  # gthread: keep-alive connections, as a client's pool expects
    )
    return web_start(run.args, run.web)


def workers_start(run: Run) -> None:
    """The workers and beat; return once every worker consumes from both queues."""
    args, pipeline = run.args, run.pipeline
    for _ in range(args.workers):
        pipeline.start_worker()
    pipeline.start_beat()
    if not eventually(
        lambda: all((queue_counts(consumers=True).get(q) or 0) >= args.workers for q in ("beans", "trades")),
        timeout=120,
    ):
        raise RuntimeError("the workers did not start consuming within 120s:\n" + pipeline.workers[0].tail())


def faults_run(run: Run, plan: LoadPlan, faults: list[Fault], load: int, target: Target) -> None:
    """Steps 2-4: the load under the fault schedule, then heal, the liveness probe, drain and reconcile."""
    args, nemesis, outcome, web = run.args, run.nemesis, run.outcome, run.web
    run_load_and_faults(args, plan, faults, load, nemesis, outcome, target)
    log(f"load done; healing | {db_progress()}")
    for note in [*nemesis.heal_all(), *run.pipeline.replenish()]:
        log(f"  {note}")
    probe_liveness(args, plan, load, outcome, target)
    log(f"liveness probe: {outcome.liveness.probe_settled}/{outcome.liveness.probe_ok} settled")
    heal_drain_reconcile(args, run.pipeline, nemesis, outcome)
    if web is not None and not web.child.alive():
        outcome.surprises.append(
            f"the web tier (gunicorn) exited during the run; log tail:\n{web.child.tail(15)}"
        )


def checks(run: Run, initial: dict[int, int]) -> tuple[checker.Verdict, Path]:
    """Step 5: every request written down, and the checker's verdict on them; return it and where they are."""
    history = run.names.run_dir / "history.jsonl"
    history_write(history, run.outcome)
    snapshot = checker.snapshot_collect(initial_balances=initial, queues=queue_counts())
    return checker.check(snapshot, run.outcome.requests, run.nemesis.injected, run.outcome.liveness), history


def cleanup(run: Run) -> None:
    """Heal, stop and remove whatever the run made (a second Ctrl-C cannot cut it short; every step bounded)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for note in run.nemesis.heal_all():
        log(f"cleanup: {note}")
    if run.web is not None:
        cleanup_step(run.web.stop, "could not stop the web tier")
    run.pipeline.stop_all()
    if run.proxies is not None:
        run.proxies.close()
    if run.vhost_made:
        cleanup_step(
            lambda: broker_admin().vhost_delete(run.names.vhost),
            f"could not delete vhost {run.names.vhost!r}",
        )
    if run.cluster is not None:
        cleanup_step(run.cluster.down, "could not stop the cluster")
    if run.args.drop_database:
        with suppress(Exception):
            from django.db import connections

            connections.close_all()
        cleanup_step(lambda: database_drop(run.names.database_url), f"could not drop database {run.names.db}")
    if run.pg_cluster is not None:
        cleanup_step(run.pg_cluster.down, "could not stop the database cluster")


def cleanup_step(step: Callable[[], object], failure: str) -> None:
    """One step of the cleanup: a failure is logged (``failure: error``), and the cleanup goes on."""
    try:
        step()
    except Exception as exc:  # noqa: BLE001 - reported; the run's result stands
        log(f"{failure}: {exc}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.check_only:
        return check_only(args)
    report_path = Path(args.report).resolve()
    load, probe, duration, faults = planned(args)
    if args.schedule_only:
        say(f"seed {args.seed}, tier {tier_of(args)}: {len(faults)} faults over ~{duration:.0f}s of load")
        print_schedule(faults)
        return 0
    run = run_make(args)

    def on_sigterm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    tier = tier_of(args)
    log(
        f"seed {args.seed}, tier {tier} ({TIERS[tier].describe()}"
        + (", scaled down from healthy 20 s / fault 10-30 s to fit" if tier == "ci" else "")
        + f"), {args.deductions} deductions; replay: {replay_command(args)}"
    )
    result, code = run.result, 2
    try:
        target, initial, plan = setup(run, load=load, probe=probe)
        faults_run(run, plan, faults, load, target)
        verdict, history = checks(run, initial)
        skipped = {"cluster_skipped": result["cluster_skipped"]} if "cluster_skipped" in result else {}
        result = {**report(run, faults, verdict, initial, history), **skipped}
        code = 0 if verdict.passed else 1
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        result["error"] = "interrupted"
        code = 130
    except Exception as exc:  # noqa: BLE001 - any failure of the harness: reported, exit 2
        log(f"the run failed: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
        result["error"] = f"{type(exc).__name__}: {exc}"
        code = 2
    finally:
        cleanup(run)
        if result.get("error") and faults:
            result["schedule"] = [fault.as_json() for fault in faults]
            result["partitions"] = run.nemesis.partitions
        report_path.write_text(json.dumps(result, indent=2, default=str) + "\n")
        log(f"report: {report_path}; exit {code}")
    return code


if __name__ == "__main__":
    sys.exit(main())
