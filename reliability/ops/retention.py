"""Retention: delete old outbox, message-log and gap rows in bounded batches.

A message-log row is the only thing that recognises a redelivery, so it must
outlive every way a message can come back: sitting in a queue (``max message
age``), the reconciler's re-publishes (grace x attempts), and a dead-letter
replay. ``retention_horizons_check`` refuses settings that break that rule, and
the consumer refuses (dead-letters) a message older than the dedupe window.
"""

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.db.models import Model, QuerySet
from django.utils import timezone

from reliability.conf import settings
from reliability.consume.message_log import message_log_delete
from reliability.models import MessageLog, OutboxMessage, ReconcileRun, StreamGap

__all__ = ["retention_horizons_check", "retention_purge"]

logger = logging.getLogger(__name__)


def _delete_in_batches(
    queryset: QuerySet[Model],
    *,
    using: str,
    batch_size: int,
    max_batches: int,
    delete: Callable[[list[Any]], int] | None = None,
) -> int:
    """Delete what ``queryset`` selects, ``batch_size`` rows per transaction; ``delete(ids)`` if given."""
    deleted = 0
    for _ in range(max_batches):
        with transaction.atomic(using=using):
            ids = list(queryset.order_by("pk").values_list("pk", flat=True)[:batch_size])
            if not ids:
                break
            if delete is not None:
                count = delete(ids)
            else:
                count, _ = queryset.model._default_manager.using(using).filter(pk__in=ids).delete()
        deleted += count
    return deleted


def retention_purge(
    *, using: str = "default", batch_size: int = 1000, max_batches: int = 50
) -> dict[str, int]:
    """Delete rows past their retention; each table at most ``batch_size x max_batches`` per call.

    Message-log rows go through ``message_log_delete``, which counts them as purged in the same
    statement, so the figures of the rows now stay right.
    """
    now = timezone.now()
    dedupe_cutoff = now - timedelta(seconds=settings.RELIABILITY_DEDUPE_WINDOW_S)
    outbox_cutoff = now - timedelta(seconds=settings.RELIABILITY_OUTBOX_RETENTION_S)
    targets: dict[str, QuerySet[Model]] = {
        "outbox": OutboxMessage.objects.using(using).filter(
            status=OutboxMessage.Status.SENT, created_at__lt=outbox_cutoff
        ),
        "message_log": MessageLog.objects.using(using).filter(applied_at__lt=dedupe_cutoff),
        "healed_gaps": StreamGap.objects.using(using).filter(
            status=StreamGap.Status.HEALED, healed_at__lt=dedupe_cutoff
        ),
        "reconcile_runs": ReconcileRun.objects.using(using).filter(started_at__lt=dedupe_cutoff),
    }
    deleters: dict[str, Callable[[list[Any]], int]] = {
        "message_log": lambda ids: message_log_delete(ids=ids, using=using),
    }
    counts = {
        name: _delete_in_batches(
            queryset, using=using, batch_size=batch_size, max_batches=max_batches, delete=deleters.get(name)
        )
        for name, queryset in targets.items()
    }
    if any(counts.values()):
        logger.info("retention on %s deleted %s", using, counts)
    return counts


def retention_horizons_check(
    *,
    dedupe_window_s: float,
    outbox_retention_s: float,
    max_message_age_s: float,
    reconcile_grace_s: float,
    reconcile_max_attempts: int,
    dead_letter_replay_window_s: float,
) -> list[str]:
    """Return what is wrong with the retention settings (empty when they are safe)."""
    problems = []
    reconcile_horizon_s = reconcile_grace_s * (reconcile_max_attempts + 1)
    horizons = {
        "RELIABILITY_MAX_MESSAGE_AGE_S": max_message_age_s,
        "the reconciler's horizon (RELIABILITY_RECONCILE_GRACE_S x (RELIABILITY_RECONCILE_MAX_ATTEMPTS + 1))": (
            reconcile_horizon_s
        ),
        "RELIABILITY_DEAD_LETTER_REPLAY_WINDOW_S": dead_letter_replay_window_s,
    }
    for name, horizon in horizons.items():
        if dedupe_window_s <= horizon:
            problems.append(
                f"RELIABILITY_DEDUPE_WINDOW_S ({dedupe_window_s:g}s) must exceed {name} ({horizon:g}s): "
                "raise RELIABILITY_DEDUPE_WINDOW_S or lower the other"
            )
    if outbox_retention_s <= reconcile_horizon_s:
        problems.append(
            f"RELIABILITY_OUTBOX_RETENTION_S ({outbox_retention_s:g}s) must exceed the reconciler's horizon "
            f"({reconcile_horizon_s:g}s), or a lost message can no longer be re-published"
        )
    return problems
