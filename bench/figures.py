"""What the legs read off the database and the machine: latencies, batch sizes, CPU, sessions."""

import os
import statistics
import time
from typing import Any

from bench import cpu
from bench.common import DB_NAME
from harness.database import rows
from harness.processes import Child


def median(values: list[float]) -> Any:
    """The median, or None (JSON null) when there is nothing to take it of."""
    return statistics.median(values) if values else None


def percentiles(sql: str, params: list[Any]) -> tuple[float, float, float]:
    from django.db import connection

    select = "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), percentile_cont(0.99) WITHIN GROUP (ORDER BY ms), max(ms)"
    with connection.cursor() as cursor:
        cursor.execute(f"{select} FROM ({sql}) AS s", params)
        p50, p99, top = cursor.fetchone()
    return float(p50 or 0), float(p99 or 0), float(top or 0)


def latencies(stages: dict[str, str], params: list[Any]) -> dict[str, Any]:
    """p50 and p99 in ms of each stage, named ``<prefix>p50_ms`` and ``<prefix>p99_ms``.

    ``stages``: a name prefix (``""`` for request -> deducted, ``"settled_"``, ...) -> the SQL of
    its ms (``percentiles``), every one with ``params``. (Typed ``Any``, as ``request_figures`` and
    ``pipeline_tallies``, so that mypy lets a leg pass them as keywords to its record.)
    """
    figures: dict[str, Any] = {}
    for prefix, sql in stages.items():
        p50, p99, _ = percentiles(sql, params)
        figures[f"{prefix}p50_ms"], figures[f"{prefix}p99_ms"] = p50, p99
    return figures


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
        for task, mean, top in rows(sql, window):
            sizes[f"{kind} {task}"] = {"mean": float(mean), "max": float(top)}
    return sizes


def batch_size_lines(sizes: dict[str, dict[str, float]]) -> list[str]:
    """One line per kind of batch (``batch_sizes``): its mean and largest size."""
    return [
        f"messages per {what}: mean {size['mean']:.1f}, max {size['max']:.0f}" for what, size in sizes.items()
    ]


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
    ours, every = rows(
        "SELECT coalesce(sum(sessions) FILTER (WHERE datname = %s), 0), coalesce(sum(sessions), 0) "
        "FROM pg_stat_database",
        [DB_NAME],
    )[0]
    return int(ours), int(every)


def backend_names() -> dict[int, str]:
    """The bench database's PostgreSQL backends by the name their client gave (PGAPPNAME ``bench-<name>``)."""
    named = rows(
        "SELECT pid, application_name FROM pg_stat_activity WHERE datname = %s AND application_name LIKE %s",
        [DB_NAME, "bench-%"],
    )
    return {int(pid): str(name).removeprefix("bench-") for pid, name in named}
