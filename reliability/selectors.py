"""Read-side queries of the reliability app (database and broker)."""

import logging
from datetime import timedelta
from typing import Any

from celery import current_app
from django.db.models import Min
from django.utils import timezone

from reliability.conf import reliability_databases, settings
from reliability.counters import (
    MESSAGE_LOG_COUNTERS,
    MESSAGE_LOG_INSERTED,
    MESSAGE_LOG_PURGED,
    MESSAGE_LOG_REDELIVERIES,
    MESSAGE_LOG_REDELIVERIES_PURGED,
    counter_totals,
)
from reliability.models import (
    DeadLetter,
    OutboxMessage,
    QueueDepth,
    StreamCounter,
    StreamGap,
    StreamWatermark,
)
from reliability.produce.publisher import broker_connection

logger = logging.getLogger(__name__)


def outbox_pending_stats() -> dict[str, Any]:
    """Return the number of pending outbox rows and the age of the oldest, in seconds (all databases)."""
    count, oldest = 0, None
    for alias in reliability_databases():
        pending = OutboxMessage.objects.using(alias).filter(status=OutboxMessage.Status.PENDING)
        count += pending.count()
        first = pending.aggregate(oldest=Min("created_at"))["oldest"]
        if first is not None and (oldest is None or first < oldest):
            oldest = first
    return {
        "outbox_pending": count,
        "outbox_oldest_pending_age_s": round((timezone.now() - oldest).total_seconds(), 3) if oldest else 0.0,
    }


def message_log_stats() -> dict[str, int]:
    """Return the message log's figures (all databases), from its counters: never by counting it.

    Rows now (less what retention purged): ``consumed``, messages applied, and
    ``duplicates_suppressed``, the redeliveries recorded on them. Ever (they never drop):
    ``consumed_ever``, ``purged`` and ``duplicates_suppressed_ever``.
    """
    totals: dict[str, int] = {}
    for alias in reliability_databases():
        for name, value in counter_totals(using=alias).items():
            if name in MESSAGE_LOG_COUNTERS:
                totals[name] = totals.get(name, 0) + value
    inserted, purged = totals.get(MESSAGE_LOG_INSERTED, 0), totals.get(MESSAGE_LOG_PURGED, 0)
    redeliveries = totals.get(MESSAGE_LOG_REDELIVERIES, 0)
    return {
        "consumed": inserted - purged,
        "duplicates_suppressed": redeliveries - totals.get(MESSAGE_LOG_REDELIVERIES_PURGED, 0),
        "consumed_ever": inserted,
        "purged": purged,
        "duplicates_suppressed_ever": redeliveries,
    }


def dead_letter_open_count() -> int:
    return sum(
        DeadLetter.objects.using(alias).filter(status=DeadLetter.Status.OPEN).count()
        for alias in reliability_databases()
    )


def pipeline_counters() -> dict[str, int]:
    """Return each named event counter (``PipelineCounter``), summed over shards and databases.

    The message log's own counters are left out: ``message_log_stats`` reports them.
    """
    totals: dict[str, int] = {}
    for alias in reliability_databases():
        for name, value in counter_totals(using=alias).items():
            if name not in MESSAGE_LOG_COUNTERS:
                totals[name] = totals.get(name, 0) + value
    return dict(sorted(totals.items()))


def gaps_escalated_count() -> int:
    return sum(
        StreamGap.objects.using(alias).filter(status=StreamGap.Status.ESCALATED).count()
        for alias in reliability_databases()
    )


def stream_positions() -> list[dict[str, Any]]:
    """Return, per stream, the producer's seq and the consumer's watermark and gaps.

    Read from each side's own tables and put side by side for display only;
    detection never needs this join.
    """
    produced: dict[str, dict[str, Any]] = {}
    for alias in reliability_databases():
        for counter in StreamCounter.objects.using(alias).order_by("stream"):
            produced[counter.stream] = {"task_name": counter.task_name, "produced_seq": counter.last_seq}
    consumed: dict[str, StreamWatermark] = {}
    for alias in reliability_databases():
        for position in StreamWatermark.objects.using(alias):
            consumed[position.stream] = position
    streams = []
    for name in sorted(produced.keys() | consumed.keys()):
        watermark = consumed.get(name)
        streams.append(
            {
                "stream": name,
                "handler": watermark.handler if watermark else produced[name]["task_name"],
                "produced_seq": produced.get(name, {}).get("produced_seq"),
                # Numbered by the producer, not yet applied (or dead-lettered) in order.
                "lag": None
                if name not in produced
                else produced[name]["produced_seq"] - (watermark.watermark if watermark else 0),
                "consumed_watermark": watermark.watermark if watermark else 0,
                "max_seen": watermark.max_seen if watermark else 0,
                "producer_high_seen": watermark.producer_high if watermark else 0,
                "gaps_found": watermark.gaps_found if watermark else 0,
                "gaps_open": watermark.gaps_open if watermark else 0,
                "gaps_healed": watermark.gaps_healed if watermark else 0,
            }
        )
    return streams


def _queue_names() -> list[str]:
    names = [queue.name for queue in current_app.conf.task_queues]
    names.append(settings.RELIABILITY_DEAD_LETTER_QUEUE)
    return names


def queue_depths() -> dict[str, int | None]:
    """Return the ready-message count of every project queue (None where unknown), from the broker.

    Uses passive declares, so it needs no management plugin and creates nothing. It opens a
    connection: for a figure read often (``/metrics``, the health page) use ``queue_depths_recorded``.
    """
    names = _queue_names()
    depths: dict[str, int | None] = dict.fromkeys(names)
    try:
        with broker_connection() as conn:
            conn.ensure_connection(max_retries=1, timeout=settings.RELIABILITY_CONNECT_TIMEOUT_S)
            for name in names:
                channel = conn.channel()
                try:
                    depths[name] = channel.queue_declare(queue=name, passive=True).message_count
                except Exception:  # noqa: BLE001 - a missing queue closes the channel; report unknown
                    depths[name] = None
                finally:
                    try:
                        channel.close()
                    except Exception:
                        logger.debug("channel already closed", exc_info=True)
    except Exception:
        logger.warning("broker unreachable; queue depths unknown", exc_info=True)
    return depths


def queue_depths_database() -> str:
    """The database holding the recorded queue depths (the broker's, one set for the deployment)."""
    return reliability_databases()[0]


def queue_depths_recorded() -> dict[str, Any]:
    """Return the queue depths as beat last read them (``queue_depths_record``): no broker connection.

    ``depths``: every project queue (as ``queue_depths``), None where unknown: never read, the
    broker did not say, or read longer ago than ``RELIABILITY_QUEUE_DEPTH_MAX_AGE_S``.
    ``read_at``: when the newest reading was taken (None if never).
    """
    rows = {row.queue: row for row in QueueDepth.objects.using(queue_depths_database())}
    oldest_fresh = timezone.now() - timedelta(seconds=settings.RELIABILITY_QUEUE_DEPTH_MAX_AGE_S)
    depths: dict[str, int | None] = {}
    for name in _queue_names():
        row = rows.get(name)
        depths[name] = row.messages if row is not None and row.observed_at >= oldest_fresh else None
    read_at = max((row.observed_at for row in rows.values()), default=None)
    return {"depths": depths, "read_at": read_at}
