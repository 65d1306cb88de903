"""Exactly-once: the pipeline end to end, trades placed one per call (``trade_place``).

``--producers`` processes place ``--trades`` trades through ``trades.services.trade_place`` while
W ``celery -A project worker -c C`` and one ``celery -A project beat`` run; the clock runs from the
first placement until the database shows every trade settled (outcome recorded). Latencies come
from the database: Trade.created_at to the deduction's LedgerEntry.created_at, and to
Trade.settled_at. Then a paced run (``--paced-trades`` at ``--paced-share`` of the throughput):
the latency without a backlog. ``bench/legs/batched_placement.py`` runs the same pipeline with
trades placed many per call.
"""

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench import cpu
from bench.common import BEANS, Children, database_reset, log, queues_reset
from bench.figures import (
    TRADE_TO_DEDUCTED,
    TRADE_TO_SETTLED,
    batch_size_lines,
    batch_sizes,
    cpu_line,
    cpu_usage,
    latencies,
    percentiles,
)
from bench.pipeline import (
    jobs,
    pipeline_settled,
    pipeline_start,
    pipeline_tallies,
    produce_and_wait,
    producer_pool,
    trades_booked,
)
from harness.database import scalar


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


# Module-level functions: they run in forked producer processes.


def _place(accounts: list[int], first: int, size: int, *, batched: bool) -> None:
    """Place trades ``first`` to ``first + size - 1`` (trade i on account i mod len) in one call."""
    from trades.services import TradeOrder, trade_place, trades_place_many

    if batched:
        orders = [
            TradeOrder(account_id=accounts[i % len(accounts)], beans=BEANS)
            for i in range(first, first + size)
        ]
        trades_place_many(orders=orders)
    else:
        trade_place(account_id=accounts[first % len(accounts)], beans=BEANS)


def place_trades(job: tuple[list[int], int, int]) -> tuple[float, float]:
    """Place ``count`` trades: one per call (``trade_place``) or ``batch`` per call (``trades_place_many``)."""
    accounts, count, batch = job
    started = time.time()
    for first in range(0, count, batch):
        _place(accounts, first, min(batch, count - first), batched=batch > 1)
    return started, time.time()


def place_trades_paced(job: tuple[list[int], int, int, float]) -> tuple[float, float]:
    """Place trades on a fixed schedule (open loop): the i-th at start + i / rate, ``batch`` per call."""
    accounts, count, batch, rate = job
    started = time.time()
    for first in range(0, count, batch):
        delay = started + first / rate - time.time()
        if delay > 0:
            time.sleep(delay)
        _place(accounts, first, min(batch, count - first), batched=batch > 1)
    return started, time.time()


def pipeline_measure(
    args: argparse.Namespace, children: Children, tag: str, *, total: int, placement_batch: int = 1
) -> ExactlyOnce:
    """The pipeline end to end, ``total`` trades, ``placement_batch`` per placement call (1: ``trade_place``)."""

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
            place_trades,
            placing(warm),
            done=settled,
            timeout=args.timeout,
            what="warm-up trades",
        )
        base_id = int(scalar("SELECT coalesce(max(id), 0) FROM trades_trade"))
        cpu_before = cpu.snapshot()
        started, placed, finished = produce_and_wait(
            pool,
            place_trades,
            placing(total),
            done=settled,
            timeout=args.timeout,
            what=f"{total} trades to settle",
        )
        cpu_s = cpu_usage(cpu_before, [*workers, beat])
        seconds = finished - started
        paced = (
            paced_run(args, pool, accounts, settled, total=total, seconds=seconds, batch=placement_batch)
            if args.paced_trades
            else {}
        )
    end_id = base_id + total
    between = [base_id, end_id]
    upto = " AND t.id <= %s"
    latency = latencies({"": TRADE_TO_DEDUCTED + upto, "settled_": TRADE_TO_SETTLED + upto}, between)
    counts, entries = trades_booked(base_id, end_id)
    trades = sum(counts.values())
    db_seconds = float(
        scalar(
            "SELECT extract(epoch FROM max(settled_at) - min(created_at)) FROM trades_trade "
            "WHERE id > %s AND id <= %s",
            between,
        )
    )
    window = [started, finished]
    relayed, publish_delay = outbox_figures(window)
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
        **latency,
        max_ms=percentiles(TRADE_TO_SETTLED + upto, between)[2],
        deducted=deducted,
        rejected=counts.get("rejected", 0),
        **pipeline_tallies(),
        relayed_by_sweep=relayed,
        publish_delay_ms=publish_delay,
        cpu_s=cpu_s,
        paced=paced,
        gaps_found=gaps_found,
        batch_sizes=batch_sizes(window),
    )


def paced_run(
    args: argparse.Namespace,
    pool: Any,
    accounts: list[int],
    settled: Callable[[], bool],
    *,
    total: int,
    seconds: float,
    batch: int,
) -> dict[str, float]:
    """Latency without a backlog: trades placed at ``--paced-share`` of the throughput (``total`` in ``seconds``).

    As many trades as the run's share of ``--trades``: the same seconds of pacing at any speed.
    """
    rate = max(args.paced_share * total / seconds, 1.0)
    paced_trades = args.paced_trades * total // args.trades
    paced_base = int(scalar("SELECT coalesce(max(id), 0) FROM trades_trade"))
    work = [(own, n, batch, rate / args.producers) for own, n in jobs(accounts, paced_trades, args.producers)]
    produce_and_wait(pool, place_trades_paced, work, done=settled, timeout=args.timeout, what="paced trades")
    return {
        "rate_per_s": rate,
        "trades": paced_trades,
        **latencies({"": TRADE_TO_DEDUCTED, "settled_": TRADE_TO_SETTLED}, [paced_base]),
    }


def outbox_figures(window: list[float]) -> tuple[int, dict[str, list[float]]]:
    """Outbox rows of the ``window`` relayed by the sweep, and created -> confirmed [p50, p99, max] per task."""
    from reliability.conf import settings

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
    return relayed, publish_delay


def measure(args: argparse.Namespace, children: Children, tag: str) -> ExactlyOnce:
    """Throughput of the pipeline end to end with ``--trades`` trades placed one per call, and its latency."""
    eo = pipeline_measure(args, children, tag, total=args.trades)
    log(
        f"  exactly-once {eo.per_s:.1f}/s in {eo.seconds:.2f}s (placement {eo.placement_per_s:.1f}/s), "
        f"p50 {eo.p50_ms:.0f} ms, p99 {eo.p99_ms:.0f} ms, deducted {eo.deducted}, "
        f"rejected {eo.rejected}, dead letters {eo.dead_letters}, "
        f"duplicates suppressed {eo.duplicates_suppressed}, relayed by sweep {eo.relayed_by_sweep}, "
        f"stream gaps recorded {eo.gaps_found}"
    )
    for line in batch_size_lines(eo.batch_sizes):
        log(f"  {line}")
    for task, (d50, d99, dmax) in eo.publish_delay_ms.items():
        log(f"  outbox->confirmed for {task}: p50 {d50:.0f} ms, p99 {d99:.0f} ms, max {dmax:.0f} ms")
    log(f"  {cpu_line(eo.cpu_s, eo.trades)}")
    if eo.paced:
        log(
            f"  paced at {eo.paced['rate_per_s']:.1f}/s: trade->deducted p50 {eo.paced['p50_ms']:.0f} ms, "
            f"p99 {eo.paced['p99_ms']:.0f} ms; trade->settled p50 {eo.paced['settled_p50_ms']:.0f} ms, "
            f"p99 {eo.paced['settled_p99_ms']:.0f} ms"
        )
    return eo
