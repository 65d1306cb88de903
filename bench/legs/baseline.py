"""Baseline: plain at-least-once Celery, the same work without the pipeline's guarantees.

The same producers send ``--trades`` plain ``apply_async`` messages (no outbox, no confirms) to W
``celery -A bench.baseline worker -c C`` whose task runs one conditional UPDATE; the clock stops
when the balances show all of them applied.
"""

import argparse
import time
from dataclasses import dataclass, field

from bench import cpu
from bench.common import (
    BEANS,
    Children,
    celery_argv,
    check_alive,
    database_reset,
    log,
    queues_reset,
    wait_consumers,
)
from bench.figures import cpu_line, cpu_usage
from bench.pipeline import jobs, produce_and_wait, producer_pool
from harness.database import scalar


@dataclass
class Baseline:
    messages: int
    seconds: float
    per_s: float
    placement_per_s: float
    applied: int
    cpu_s: dict[str, float] = field(default_factory=dict)


# A module-level function: it runs in forked producer processes.


def send_baseline(job: tuple[list[int], int]) -> tuple[float, float]:
    """Send ``count`` deductions (message i on account i mod len), one ``apply_async`` each."""
    from bench.baseline import deduct

    accounts, count = job
    started = time.time()
    for i in range(count):
        deduct.apply_async(args=[accounts[i % len(accounts)], BEANS])
    return started, time.time()


def measure(args: argparse.Namespace, children: Children, tag: str) -> Baseline:
    """Throughput of plain Celery doing the same deductions: ``--trades`` messages, one UPDATE each."""
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
            send_baseline,
            jobs(accounts, warm, args.producers),
            done=lambda: applied() >= warm,
            timeout=args.timeout,
            what="warm-up messages",
        )
        before = applied()
        cpu_before = cpu.snapshot()
        started, placed, finished = produce_and_wait(
            pool,
            send_baseline,
            jobs(accounts, args.trades, args.producers),
            done=lambda: applied() - before >= args.trades,
            timeout=args.timeout,
            what=f"{args.trades} baseline updates",
        )
        cpu_s = cpu_usage(cpu_before, workers)
    count = applied() - before
    children.stop(*workers)
    seconds = finished - started
    bl = Baseline(
        messages=args.trades,
        seconds=seconds,
        per_s=args.trades / seconds,
        placement_per_s=args.trades / (placed - started),
        applied=count,
        cpu_s=cpu_s,
    )
    log(f"  baseline {bl.per_s:.1f}/s in {bl.seconds:.2f}s (sent {bl.placement_per_s:.0f}/s)")
    log(f"  {cpu_line(bl.cpu_s, bl.messages)}")
    return bl
