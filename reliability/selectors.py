"""Read-side queries of the reliability app (database and broker)."""

import logging
from typing import Any

from celery import current_app
from django.db.models import Min, Sum
from django.utils import timezone

from reliability.conf import settings
from reliability.models import (
    DeadLetter,
    MessageLog,
    OutboxMessage,
    PipelineCounter,
    StreamCounter,
    StreamGap,
    StreamWatermark,
)
from reliability.produce.publisher import broker_connection

logger = logging.getLogger(__name__)


def _databases() -> list[str]:
    return list(settings.RELIABILITY_DATABASES)


def outbox_pending_stats() -> dict[str, Any]:
    """Return the number of pending outbox rows and the age of the oldest, in seconds (all databases)."""
    count, oldest = 0, None
    for alias in _databases():
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
    """Return how many messages were applied and how many duplicate deliveries were skipped."""
    consumed = duplicates = 0
    for alias in _databases():
        consumed += MessageLog.objects.using(alias).count()
        duplicates += MessageLog.objects.using(alias).aggregate(n=Sum("redeliveries", default=0))["n"]
    return {"consumed": consumed, "duplicates_suppressed": int(duplicates)}


def dead_letter_open_count() -> int:
    return sum(
        DeadLetter.objects.using(alias).filter(status=DeadLetter.Status.OPEN).count()
        for alias in _databases()
    )


def pipeline_counters() -> dict[str, int]:
    """Return each named event counter (``PipelineCounter``), summed over the databases."""
    totals: dict[str, int] = {}
    for alias in _databases():
        for name, value in PipelineCounter.objects.using(alias).values_list("name", "value"):
            totals[name] = totals.get(name, 0) + value
    return dict(sorted(totals.items()))


def gaps_escalated_count() -> int:
    return sum(
        StreamGap.objects.using(alias).filter(status=StreamGap.Status.ESCALATED).count()
        for alias in _databases()
    )


def stream_positions() -> list[dict[str, Any]]:
    """Return, per stream, the producer's seq and the consumer's watermark and gaps.

    Read from each side's own tables and put side by side for display only;
    detection never needs this join.
    """
    produced: dict[str, dict[str, Any]] = {}
    for alias in _databases():
        for counter in StreamCounter.objects.using(alias).order_by("stream"):
            produced[counter.stream] = {"task_name": counter.task_name, "produced_seq": counter.last_seq}
    consumed: dict[str, StreamWatermark] = {}
    for alias in _databases():
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


def queue_depths() -> dict[str, int | None]:
    """Return the ready-message count of every project queue (None where unknown).

    Uses passive declares, so it needs no management plugin and creates nothing.
    """
    names = [queue.name for queue in current_app.conf.task_queues]
    names.append(settings.RELIABILITY_DEAD_LETTER_QUEUE)
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
