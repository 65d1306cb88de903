"""Retention: drop the outbox's and the message log's partitions past their window; delete the
rest (small tables, the default partitions) in bounded batches.

A message-log row is the only thing that recognises a redelivery, so it must
outlive every way a message can come back: sitting in a queue (``max message
age``), the reconciler's re-publishes (grace x attempts), and a dead-letter
replay. ``retention_horizons_check`` refuses settings that break that rule, and
the consumer refuses (dead-letters) a message older than the dedupe window.

The outbox and the message log are partitioned by the time in their message ids
(``reliability.ops.partitions``). A partition goes only when its *whole* slice is past
the window, so a row is kept for its window and at most one partition width more: the
width adds to retention, never takes from it, and the horizons checked above hold.
"""

import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import DatabaseError, transaction
from django.db.backends.utils import CursorWrapper
from django.db.models import Model, QuerySet
from django.utils import timezone

from reliability.conf import settings
from reliability.consume.message_log import message_log_delete, message_log_partition_count_purged
from reliability.models import MessageLog, OutboxMessage, ReconcileRun, StreamGap
from reliability.ops.partitions import (
    Partition,
    partitions_default_table,
    partitions_drop,
    partitions_ensure,
    partitions_list,
)

__all__ = [
    "retention_cutoffs",
    "retention_horizons_check",
    "retention_message_made_at",
    "retention_partitions_ensure",
    "retention_partitions_maintain",
    "retention_purge",
]

logger = logging.getLogger(__name__)

PARTITIONED = (OutboxMessage, MessageLog)


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


def _default_partition_rows(queryset: QuerySet[Model]) -> QuerySet[Model]:
    """``queryset`` narrowed to the rows of its table's default partition (no time slice holds them)."""
    table = queryset.model._meta.db_table
    default = partitions_default_table(table)
    # tableoid names the partition a row is stored in: the batches never touch a time slice.
    return queryset.extra(where=[f"{table}.tableoid = '{default}'::regclass"])  # noqa: S610


def retention_partitions_ensure(*, using: str = "default", since_ms: int | None = None) -> int:
    """Make the partitions ahead of now (``RELIABILITY_PARTITIONS_AHEAD``); return how many were made."""
    now_ms = int(timezone.now().timestamp() * 1000)
    return sum(
        len(
            partitions_ensure(
                table=model._meta.db_table,
                now_ms=now_ms,
                since_ms=since_ms,
                width_s=settings.RELIABILITY_PARTITION_WIDTH_S,
                ahead=settings.RELIABILITY_PARTITIONS_AHEAD,
                using=using,
            )
        )
        for model in PARTITIONED
    )


def _outbox_all_sent(cursor: CursorWrapper, partition: Partition) -> bool:
    # A row still pending past the retention (the broker refused it for weeks) keeps its whole
    # partition: it is still to be published. The partial index on pending rows answers this.
    cursor.execute(f"SELECT 1 FROM {partition.name} WHERE status = 'pending' LIMIT 1")  # noqa: S608
    if cursor.fetchone() is None:
        return True
    logger.warning("partition %s kept past its retention: it holds pending outbox rows", partition.name)
    return False


def _message_log_counted(using: str) -> Callable[[CursorWrapper, Partition], bool]:
    def count(cursor: CursorWrapper, partition: Partition) -> bool:
        message_log_partition_count_purged(partition=partition.name, using=using)
        return True

    return count


def _partitions_past(*, table: str, cutoff: datetime, using: str) -> list[Partition]:
    """The slices of ``table`` wholly before ``cutoff``: only those may go."""
    cutoff_ms = int(cutoff.timestamp() * 1000)
    return [p for p in partitions_list(table=table, using=using) if p.to_ms <= cutoff_ms]


def retention_partitions_maintain(*, using: str = "default", drop: bool = True) -> dict[str, int]:
    """Drop the partitions past retention (unless not ``drop``) and make the ones ahead; return how
    many of each.

    DDL: the role must own the tables. Where the app role may not (README, "Least privilege"),
    this logs what to do and returns zeros; ``manage.py partitions``, run as the owner, does it.
    """
    cutoffs = retention_cutoffs()
    outbox_table, log_table = OutboxMessage._meta.db_table, MessageLog._meta.db_table
    dropped: list[str] = []
    try:
        if drop:
            dropped += partitions_drop(
                table=outbox_table,
                partitions=_partitions_past(table=outbox_table, cutoff=cutoffs["outbox"], using=using),
                before=_outbox_all_sent,
                using=using,
            )
            dropped += partitions_drop(
                table=log_table,
                partitions=_partitions_past(table=log_table, cutoff=cutoffs["message_log"], using=using),
                before=_message_log_counted(using),
                using=using,
            )
        made = retention_partitions_ensure(using=using)
    except DatabaseError as exc:
        # Not the owner of the tables (or the DDL failed otherwise): inserts still land, in the
        # slices made so far and then in the default partitions; nothing is lost.
        logger.error(
            "partitions on %s not maintained (%s): run manage.py partitions as the tables' owner", using, exc
        )
        return {"partitions_dropped": len(dropped), "partitions_made": 0, "partitions_failed": 1}
    if dropped:
        logger.info("retention on %s dropped %s", using, ", ".join(dropped))
    return {"partitions_dropped": len(dropped), "partitions_made": made, "partitions_failed": 0}


def retention_purge(
    *, using: str = "default", batch_size: int = 1000, max_batches: int = 50
) -> dict[str, int]:
    """Drop partitions past their retention, make the next ones, and delete old rows of the small
    tables and of the default partitions, ``batch_size x max_batches`` per table at most per call.

    Returns rows deleted per table, and partitions dropped and made. Message-log rows are counted
    as purged in the transaction that drops or deletes them, so the figures of the rows now stay
    right.
    """
    partitions = retention_partitions_maintain(using=using)
    cutoffs = retention_cutoffs()
    dedupe_cutoff, outbox_cutoff = cutoffs["message_log"], cutoffs["outbox"]
    log_table = MessageLog._meta.db_table
    targets: dict[str, QuerySet[Model]] = {
        "outbox": _default_partition_rows(
            OutboxMessage.objects.using(using).filter(
                status=OutboxMessage.Status.SENT, created_at__lt=outbox_cutoff
            )
        ),
        "message_log": _default_partition_rows(
            MessageLog.objects.using(using).filter(applied_at__lt=dedupe_cutoff)
        ),
        "healed_gaps": StreamGap.objects.using(using).filter(
            status=StreamGap.Status.HEALED, healed_at__lt=dedupe_cutoff
        ),
        "reconcile_runs": ReconcileRun.objects.using(using).filter(started_at__lt=dedupe_cutoff),
    }
    deleters: dict[str, Callable[[list[Any]], int]] = {
        "message_log": lambda ids: message_log_delete(
            ids=ids, table=partitions_default_table(log_table), using=using
        ),
    }
    counts = {
        name: _delete_in_batches(
            queryset, using=using, batch_size=batch_size, max_batches=max_batches, delete=deleters.get(name)
        )
        for name, queryset in targets.items()
    }
    counts.update(partitions)
    if any(counts.values()):
        logger.info("retention on %s: %s", using, counts)
    return counts


def retention_cutoffs(*, now: datetime | None = None) -> dict[str, datetime]:
    """For ``"outbox"`` and ``"message_log"``: messages made before this time may have been removed
    by retention (and nothing made since has been), as ``retention_message_made_at`` dates them.

    For checkers: a row that is missing and older than this was purged, not lost.
    """
    now = now or timezone.now()
    return {
        "outbox": now - timedelta(seconds=settings.RELIABILITY_OUTBOX_RETENTION_S),
        "message_log": now - timedelta(seconds=settings.RELIABILITY_DEDUPE_WINDOW_S),
    }


def retention_message_made_at(message_id: uuid.UUID | str, *, otherwise: datetime) -> datetime:
    """When retention considers ``message_id`` made: the millisecond in a UUIDv7 (its partition),
    else ``otherwise``, a time no later than its rows' own (``created_at``, ``applied_at``), such as
    that of the business row written with it."""
    value = message_id if isinstance(message_id, uuid.UUID) else uuid.UUID(str(message_id))
    if value.version == 7:
        return datetime.fromtimestamp((value.int >> 80) / 1000, tz=UTC)
    return otherwise


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
