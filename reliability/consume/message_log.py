"""The message log: one row per (handler, message_id), committed with the handler's effect.

Its primary key is what recognises a redelivery; the outcome and redelivery count are
what ``pipeline_status`` and ``/metrics`` report.
"""

import logging
import uuid
from collections.abc import Sequence

from django.db import connections
from django.db.models import F
from django.utils import timezone

from reliability.models import MessageLog

logger = logging.getLogger(__name__)


def message_log_insert(
    *, handler: str, message_id: uuid.UUID, stream: str, seq: int, using: str = "default"
) -> bool:
    """Insert the message-log row first; return False when it already exists (a duplicate)."""
    return message_log_insert_many(handler=handler, entries=[(message_id, stream, seq)], using=using) == 1


def message_log_insert_many(
    *, handler: str, entries: Sequence[tuple[uuid.UUID, str, int]], using: str = "default"
) -> int:
    """Insert the message-log rows of ``entries`` (message_id, stream, seq) in one statement;
    return how many were new.

    ``ON CONFLICT DO NOTHING`` waits for a concurrent transaction holding the same key: if that
    one commits, this insert does nothing (a duplicate); if it rolls back, this one inserts.
    Never check-then-insert.
    """
    table = MessageLog._meta.db_table
    with connections[using].cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (handler, message_id, stream, seq, outcome, redeliveries, applied_at) "  # noqa: S608
            "SELECT %s, m, s, q, '', 0, %s FROM unnest(%s::uuid[], %s::text[], %s::bigint[]) AS u(m, s, q) "
            "ON CONFLICT (handler, message_id) DO NOTHING",
            [
                handler,
                timezone.now(),
                [message_id for message_id, _, _ in entries],
                [stream for _, stream, _ in entries],
                [seq for _, _, seq in entries],
            ],
        )
        return int(cursor.rowcount)


def message_log_record_outcome(
    *, handler: str, message_id: uuid.UUID, outcome: str, using: str = "default"
) -> None:
    message_log_record_outcomes(handler=handler, outcomes=[(message_id, outcome)], using=using)


def message_log_record_outcomes(
    *, handler: str, outcomes: Sequence[tuple[uuid.UUID, str]], using: str = "default"
) -> None:
    """Record the outcome of many messages in one statement."""
    table = MessageLog._meta.db_table
    with connections[using].cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} AS l SET outcome = u.o FROM unnest(%s::uuid[], %s::text[]) AS u(m, o) "  # noqa: S608
            "WHERE l.handler = %s AND l.message_id = u.m",
            [[m for m, _ in outcomes], [o[:200] for _, o in outcomes], handler],
        )


def message_log_count_redelivery(*, handler: str, message_id: uuid.UUID, using: str = "default") -> None:
    MessageLog.objects.using(using).filter(handler=handler, message_id=message_id).update(
        redeliveries=F("redeliveries") + 1
    )
