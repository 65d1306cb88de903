"""Read-side queries of the reliability app (database and broker)."""

import logging
from typing import Any

from celery import current_app
from django.conf import settings
from django.db.models import Min, Sum
from django.utils import timezone
from kombu import Connection

from .models import DeadLetter, MessageLog, OutboxMessage

logger = logging.getLogger(__name__)


def outbox_pending_stats(*, using: str = "default") -> dict[str, Any]:
    """Return the number of pending outbox rows and the age of the oldest, in seconds."""
    pending = OutboxMessage.objects.using(using).filter(status=OutboxMessage.Status.PENDING)
    oldest = pending.aggregate(oldest=Min("created_at"))["oldest"]
    return {
        "outbox_pending": pending.count(),
        "outbox_oldest_pending_age_s": round((timezone.now() - oldest).total_seconds(), 3) if oldest else 0.0,
    }


def message_log_stats(*, using: str = "default") -> dict[str, int]:
    """Return how many messages were applied and how many duplicate deliveries were skipped."""
    totals = MessageLog.objects.using(using).aggregate(duplicates=Sum("redeliveries", default=0))
    return {
        "consumed": MessageLog.objects.using(using).count(),
        "duplicates_suppressed": int(totals["duplicates"]),
    }


def dead_letter_open_count(*, using: str = "default") -> int:
    return DeadLetter.objects.using(using).filter(status=DeadLetter.Status.OPEN).count()


def queue_depths() -> dict[str, int | None]:
    """Return the ready-message count of every project queue (None where unknown).

    Uses passive declares, so it needs no management plugin and creates nothing.
    """
    names = [queue.name for queue in current_app.conf.task_queues]
    names.append(settings.RELIABILITY_DEAD_LETTER_QUEUE)
    depths: dict[str, int | None] = dict.fromkeys(names)
    try:
        with Connection(
            current_app.conf.broker_url, connect_timeout=settings.RELIABILITY_CONNECT_TIMEOUT_S
        ) as conn:
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
