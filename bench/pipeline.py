"""The pipeline under test and what feeds it: its workers and beat, and the producer processes."""

import argparse
import multiprocessing as mp
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from bench.common import POLL_S, RUN_DIR, Children, celery_argv, check_alive, wait_consumers
from harness.database import rows, scalar
from harness.processes import Child


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
        pending, dead = rows(
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


def trades_booked(base_id: int, end_id: int | None = None) -> tuple[dict[str, int], int]:
    """The trades after ``base_id`` (up to ``end_id``) by status, and the ledger entries of their deductions."""
    between = [base_id, end_id]
    counts = dict(
        rows(
            "SELECT status, count(*) FROM trades_trade WHERE id > %s AND id <= coalesce(%s::bigint, id) "
            "GROUP BY status",
            between,
        )
    )
    entries = scalar(
        "SELECT count(*) FROM trades_trade t JOIN beans_ledgerentry l ON l.message_id = t.deduction_message_id "
        "WHERE t.id > %s AND t.id <= coalesce(%s::bigint, t.id)",
        between,
    )
    return counts, int(entries)


def pipeline_tallies() -> dict[str, Any]:
    """The dead letters and the duplicates the message log suppressed, as a leg ends."""
    return {
        "dead_letters": int(scalar("SELECT count(*) FROM reliability_deadletter")),
        "duplicates_suppressed": int(
            scalar("SELECT coalesce(sum(redeliveries), 0) FROM reliability_messagelog")
        ),
    }


# --------------------------------------------------------------------------- producers
# Forked processes, each running a module-level function of its leg over its share of the work.


def _producer_init() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and terminates us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the parent's handler: terminate() must kill


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
