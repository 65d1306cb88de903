"""Health figures of the pipeline: read-only queries for the admin health page, /metrics and status.

Domain-free like the rest of the app: streams, outbox, message log, dead letters and
queues, over every database of ``settings.RELIABILITY_DATABASES``.
"""

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import connections
from django.db.models import Count, Min
from django.db.models.functions import TruncMinute
from django.utils import timezone

from reliability.conf import reliability_databases, settings
from reliability.models import DeadLetter, MessageLog, OutboxMessage, PipelineMode
from reliability.produce.publisher import broker_connection, connection_abandon
from reliability.selectors import (
    gaps_escalated_count,
    message_log_stats,
    queue_depths_recorded,
    stream_positions,
)

THROUGHPUT_WINDOW_MINUTES = 15


def _age_s(now: datetime, then: datetime | None) -> float:
    return round(max((now - then).total_seconds(), 0.0), 3) if then is not None else 0.0


def outbox_pending_by_stream(*, now: datetime | None = None) -> dict[str, dict[str, Any]]:
    """Return, per stream, the pending outbox rows and the age of the oldest, in seconds."""
    now = now or timezone.now()
    counts: dict[str, int] = defaultdict(int)
    oldest: dict[str, datetime] = {}
    for alias in reliability_databases():
        rows = (
            OutboxMessage.objects.using(alias)
            .filter(status=OutboxMessage.Status.PENDING)
            .values("stream")
            .annotate(n=Count("id"), oldest=Min("created_at"))
            .order_by()
        )
        for row in rows:
            stream = row["stream"]
            counts[stream] += row["n"]
            if stream not in oldest or row["oldest"] < oldest[stream]:
                oldest[stream] = row["oldest"]
    return {
        stream: {"outbox_pending": counts[stream], "outbox_oldest_pending_age_s": _age_s(now, oldest[stream])}
        for stream in sorted(counts)
    }


def stream_health(*, now: datetime | None = None) -> list[dict[str, Any]]:
    """Return ``stream_positions()`` with the lag and the pending outbox rows of each stream.

    ``lag`` is produced seq minus consumed watermark: messages the producer
    numbered that the consumer has not applied (or dead-lettered) in order yet.
    It is None for a stream whose producer counter is in none of the databases.
    """
    now = now or timezone.now()
    outbox = outbox_pending_by_stream(now=now)
    streams = stream_positions()
    known = {row["stream"] for row in streams}
    for stream in sorted(outbox.keys() - known):  # a counter row always exists; be safe anyway
        streams.append(
            {
                "stream": stream,
                "handler": "",
                "produced_seq": None,
                "consumed_watermark": 0,
                "max_seen": 0,
                "producer_high_seen": 0,
                "gaps_found": 0,
                "gaps_open": 0,
                "gaps_healed": 0,
                "lag": None,
            }
        )
    for row in streams:
        row.update(outbox.get(row["stream"], {"outbox_pending": 0, "outbox_oldest_pending_age_s": 0.0}))
    return sorted(streams, key=lambda row: row["stream"])


def dead_letter_open_by_handler() -> dict[str, int]:
    """Return the open dead letters per handler (all databases)."""
    counts: dict[str, int] = defaultdict(int)
    for alias in reliability_databases():
        rows = (
            DeadLetter.objects.using(alias)
            .filter(status=DeadLetter.Status.OPEN)
            .values("handler")
            .annotate(n=Count("id"))
            .order_by()
        )
        for row in rows:
            counts[row["handler"]] += row["n"]
    return dict(sorted(counts.items()))


def message_log_throughput(
    *, minutes: int = THROUGHPUT_WINDOW_MINUTES, now: datetime | None = None
) -> dict[str, Any]:
    """Return the messages applied per minute and handler over the last ``minutes`` minutes.

    The window ends with the current (partial) minute. Minutes without a message
    count 0, so every series has one value per minute, oldest first.
    """
    now = (now or timezone.now()).astimezone(UTC)
    last = now.replace(second=0, microsecond=0)
    buckets = [last - timedelta(minutes=minutes - 1 - i) for i in range(minutes)]
    index = {bucket: i for i, bucket in enumerate(buckets)}
    series: dict[str, list[int]] = {}
    for alias in reliability_databases():
        rows = (
            MessageLog.objects.using(alias)
            .filter(applied_at__gte=buckets[0], applied_at__lt=last + timedelta(minutes=1))
            .annotate(minute=TruncMinute("applied_at", tzinfo=UTC))
            .values("minute", "handler")
            .annotate(n=Count("id"))
            .order_by()
        )
        for row in rows:
            counts = series.setdefault(row["handler"], [0] * minutes)
            counts[index[row["minute"].astimezone(UTC)]] += row["n"]
    by_handler = dict(sorted(series.items()))
    total = [sum(counts[i] for counts in by_handler.values()) for i in range(minutes)]
    return {"window_minutes": minutes, "minutes": buckets, "by_handler": by_handler, "total": total}


def pipeline_mode_state() -> dict[str, Any]:
    """Return the degrade mode as last recorded by ``pipeline_mode_evaluate`` (read afresh, not cached)."""
    mode = PipelineMode.objects.filter(key="pipeline").first()
    if mode is None:
        return {"degraded": False, "reason": "", "changed_at": None, "evaluated_at": None}
    return {
        "degraded": mode.degraded,
        "reason": mode.reason,
        "changed_at": mode.changed_at,
        "evaluated_at": mode.evaluated_at,
    }


def pipeline_health(*, now: datetime | None = None) -> dict[str, Any]:
    """Return every health figure of the pipeline, read at one moment.

    Per stream (``streams``) and in ``totals``; dead letters open in total and by
    handler; queue depths as beat last read them from the broker (None where unknown,
    ``queue_depths_read_at`` the time of that reading); throughput per minute over the
    last 15 minutes; the degrade mode. ``totals.lag`` adds up the positive lags only: the
    figure degrade mode compares with its threshold. Nothing here grows with the history:
    the message log's figures come from its counters, the rest from indexes on what is
    pending, open or recent.
    """
    now = now or timezone.now()
    streams = stream_health(now=now)
    dead_letters = dead_letter_open_by_handler()
    log = message_log_stats()
    depths = queue_depths_recorded()
    totals = {
        "produced_seq": sum(row["produced_seq"] or 0 for row in streams),
        "consumed_watermark": sum(row["consumed_watermark"] for row in streams),
        "lag": sum(max(row["lag"] or 0, 0) for row in streams),
        "gaps_open": sum(row["gaps_open"] for row in streams),
        "gaps_healed": sum(row["gaps_healed"] for row in streams),
        "outbox_pending": sum(row["outbox_pending"] for row in streams),
        "outbox_oldest_pending_age_s": max(
            (row["outbox_oldest_pending_age_s"] for row in streams), default=0.0
        ),
        "consumed": log["consumed"],
        "duplicates_suppressed": log["duplicates_suppressed"],
        "dead_letters_open": sum(dead_letters.values()),
        "gaps_escalated": gaps_escalated_count(),
    }
    return {
        "generated_at": now,
        "streams": streams,
        "totals": totals,
        "dead_letters_open_by_handler": dead_letters,
        "queue_depths": depths["depths"],
        "queue_depths_read_at": depths["read_at"],
        "throughput": message_log_throughput(now=now),
        "mode": pipeline_mode_state(),
    }


def readiness() -> dict[str, str]:
    """What this process cannot reach now: ``{"database:<alias>" or "broker": what failed}``.

    Empty when every database of ``RELIABILITY_DATABASES`` answers a query and the broker
    accepts a connection. Each attempt has the library's deadlines (libpq's connect timeout,
    ``RELIABILITY_CONNECT_TIMEOUT_S`` for the broker), so a silent peer costs seconds, not minutes.
    """
    problems: dict[str, str] = {}
    for alias in reliability_databases():
        try:
            connections[alias].ensure_connection()
            with connections[alias].cursor() as cursor:
                cursor.execute("SELECT 1")
        except Exception as exc:  # noqa: BLE001 - the answer is what failed
            connections[alias].close()  # a broken persistent connection must not linger
            problems[f"database:{alias}"] = f"{type(exc).__name__}: {exc}".strip()[:300]
    connection = broker_connection()
    try:
        connection.ensure_connection(max_retries=1, timeout=settings.RELIABILITY_CONNECT_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - the answer is what failed
        problems["broker"] = f"{type(exc).__name__}: {exc}".strip()[:300]
    finally:
        connection_abandon(connection)
    return problems
