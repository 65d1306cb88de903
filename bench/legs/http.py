"""Exactly-once through HTTP: the pipeline behind the web tier, ``POST /api/trades/``, one trade per request.

The workers and beat of the exactly-once leg, plus the web tier as operators run it
(``harness.web.Gunicorn``: gunicorn with ``project/gunicorn.conf.py``, ``--http-workers``
processes x ``--http-threads``; ``bench/web.py``) and an API key of the bench's own;
``--http-connections`` clients (wrk, else a Python client: ``bench/httpload.py`` says why) each
send ``POST /api/trades/``, one trade per request and one request at a time, ``--http-trades``
requests in all over the bench's accounts. The clock runs from the first request until the
database shows every trade settled; request latency is the client's, request -> deducted comes
from the database. Any answer but 201 fails the bench. Then a paced run
(``--http-paced-trades`` at ``--paced-share`` of the peak, open loop): the latency goal's figure.
Every process runs with ``DJANGO_SETTINGS_MODULE=bench.settings``.
"""

import argparse
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace

from bench.common import BENCH_SETTINGS, Children, database_reset, log, queues_reset, wait_until
from bench.figures import (
    RELAYED_TO_DEDUCTED,
    TRADE_TO_DEDUCTED,
    TRADE_TO_RELAYED,
    TRADE_TO_SETTLED,
    CpuWatch,
    batch_size_lines,
    batch_sizes,
    cpu_line,
    latencies,
    sessions_line,
)
from bench.pipeline import pipeline_settled, pipeline_start, pipeline_tallies, trades_booked
from bench.profile import Profiles
from bench.web import WebServer, http_checked, http_load, load_spec, request_figures
from harness.database import scalar
from harness.processes import Child


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


def measure(
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
    latency = latencies({"": TRADE_TO_DEDUCTED, "settled_": TRADE_TO_SETTLED}, [base_id])
    counts, entries = trades_booked(base_id)
    trades = sum(counts.values())
    theirs = int(
        scalar(
            "SELECT count(*) FROM trades_trade WHERE id > %s AND client_id = %s", [base_id, server.client_id]
        )
    )
    window = [result.first_sent, finished]
    sizes = batch_sizes(window)
    paced = paced_measure(args, children, tag, server, accounts, trades / seconds, processes, settled)
    children.stop(*workers, beat)
    deducted = counts.get("deducted", 0)
    if trades != total or theirs != trades or entries != deducted or deducted != trades:
        raise RuntimeError(
            f"{total} requests answered 201, but the database holds {trades} trades after them "
            f"({theirs} placed with the bench's key): {counts}; {entries} ledger entries"
        )
    http = Http(
        trades=trades,
        seconds=seconds,
        per_s=trades / seconds,
        **request_figures(result),
        **latency,
        deducted=deducted,
        rejected=counts.get("rejected", 0),
        **pipeline_tallies(),
        client=client,
        cpu_s=cpu_s,
        batch_sizes=sizes,
        db_sessions=watch.sessions[0],
        db_sessions_all_databases=watch.sessions[1],
        paced=paced,
    )
    log(
        f"  HTTP {http.per_s:.1f}/s placed and deducted in {http.seconds:.2f}s "
        f"({http.request_per_s:.1f} requests/s answered), request p50 {http.request_p50_ms:.0f} ms, "
        f"p99 {http.request_p99_ms:.0f} ms; request->deducted p50 {http.p50_ms:.0f} ms, "
        f"p99 {http.p99_ms:.0f} ms; {http.requests} requests, {http.non_201} not 201"
    )
    for line in batch_size_lines(http.batch_sizes):
        log(f"  {line}")
    log(f"  {cpu_line(http.cpu_s, http.trades)}")
    log(f"  {sessions_line(http.db_sessions, http.db_sessions_all_databases, http.trades)}")
    return http


def paced_measure(
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
    stages = {
        "": TRADE_TO_DEDUCTED,
        "relayed_": TRADE_TO_RELAYED,
        "relayed_to_deducted_": RELAYED_TO_DEDUCTED,
    }
    return {
        "rate_per_s": rate,
        "offered_per_s": result.per_s,
        "trades": result.requests,
        "request_p50_ms": result.percentile(0.5),
        "request_p99_ms": result.percentile(0.99),
        **latencies(stages, [base_id]),
    }
