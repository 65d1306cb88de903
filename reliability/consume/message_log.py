"""The message log: one row per (handler, message_id), committed with the handler's effect.

Its primary key is what recognises a redelivery; the outcome and redelivery count are
what ``pipeline_status`` and ``/metrics`` report.

Every write here adds to the message log's counters (``reliability.counters``) in the same
statement: rows inserted, redeliveries counted, and rows and redeliveries purged. So the
figures are read from a few counter rows, never by counting the log, and they commit or roll
back with the rows they count. Rows written or deleted around these functions are not counted
(``message_log_recount`` repairs the figures).
"""

import logging
import uuid
from collections.abc import Sequence

from django.db import connections, transaction
from django.utils import timezone

from reliability.counters import (
    MESSAGE_LOG_INSERTED,
    MESSAGE_LOG_PURGED,
    MESSAGE_LOG_REDELIVERIES,
    MESSAGE_LOG_REDELIVERIES_PURGED,
    counter_add_sql,
    counter_shards,
)
from reliability.envelope import Message
from reliability.models import MessageLog, PipelineCounter

logger = logging.getLogger(__name__)


def message_log_insert(
    *, handler: str, message_id: uuid.UUID, stream: str, seq: int, using: str = "default"
) -> bool:
    """Insert the message-log row first; return False when it already exists (a duplicate)."""
    return message_log_insert_many(handler=handler, entries=[(message_id, stream, seq)], using=using) == 1


def message_dedupe(*, handler: str, message: Message, using: str = "default") -> bool:
    """Log ``message`` first, in the effect's transaction; return whether this is its first delivery.

    A redelivery (the row exists: its unique key is the duplicate signal) is counted instead.
    """
    first = message_log_insert(
        handler=handler, message_id=message.message_id, stream=message.stream, seq=message.seq, using=using
    )
    if not first:
        message_log_count_redelivery(handler=handler, message_id=message.message_id, using=using)
    return first


def message_log_insert_many(
    *, handler: str, entries: Sequence[tuple[uuid.UUID, str, int]], using: str = "default"
) -> int:
    """Insert the message-log rows of ``entries`` (message_id, stream, seq) in one statement;
    return how many were new.

    ``ON CONFLICT DO NOTHING`` waits for a concurrent transaction holding the same key: if that
    one commits, this insert does nothing (a duplicate); if it rolls back, this one inserts.
    Never check-then-insert. The same statement adds the new rows to ``message_log_inserted``.
    """
    table = MessageLog._meta.db_table
    with connections[using].cursor() as cursor:
        cursor.execute(
            f"WITH inserted AS (INSERT INTO {table} "  # noqa: S608 - no user input in the SQL
            "(handler, message_id, stream, seq, outcome, redeliveries, applied_at) "
            "SELECT %s, m, s, q, '', 0, %s FROM unnest(%s::uuid[], %s::text[], %s::bigint[]) AS u(m, s, q) "
            "ON CONFLICT (handler, message_id) DO NOTHING RETURNING 1), "
            f"counted AS ({counter_add_sql('SELECT %s::text, count(*) FROM inserted')}) "
            "SELECT count(*) FROM inserted",
            [
                handler,
                timezone.now(),
                [message_id for message_id, _, _ in entries],
                [stream for _, stream, _ in entries],
                [seq for _, _, seq in entries],
                MESSAGE_LOG_INSERTED,
                counter_shards(),
            ],
        )
        return int(cursor.fetchone()[0])


def message_log_record_outcome(
    *, handler: str, message_id: uuid.UUID, outcome: str, using: str = "default"
) -> None:
    message_log_record_outcomes(handler=handler, outcomes=[(message_id, outcome)], using=using)


def message_log_record_outcomes(
    *, handler: str, outcomes: Sequence[tuple[uuid.UUID, str]], using: str = "default"
) -> None:
    """Record the outcome of many messages in one statement.

    ``message_id = ANY(...)`` repeats the join's ids as a condition on the partition key, so the
    planner prunes the table to the slices that hold them (usually the newest). Joined only, the
    update probed every slice's index and held the consumer's transaction several times longer:
    long enough, on a busy host, for retention's ``DROP`` of an old slice to time out behind it and
    queue the pipeline's inserts meanwhile (the 70% soak of 2026-12-07).
    """
    table = MessageLog._meta.db_table
    message_ids = [m for m, _ in outcomes]
    with connections[using].cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} AS l SET outcome = u.o FROM unnest(%s::uuid[], %s::text[]) AS u(m, o) "  # noqa: S608
            "WHERE l.handler = %s AND l.message_id = u.m AND l.message_id = ANY(%s::uuid[])",
            [message_ids, [o[:200] for _, o in outcomes], handler, message_ids],
        )


def message_log_count_redelivery(*, handler: str, message_id: uuid.UUID, using: str = "default") -> None:
    """Count a duplicate delivery on the message's row and in ``message_log_redeliveries``, in one statement."""
    table = MessageLog._meta.db_table
    with connections[using].cursor() as cursor:
        cursor.execute(
            f"WITH counted AS (UPDATE {table} SET redeliveries = redeliveries + 1 "  # noqa: S608
            "WHERE handler = %s AND message_id = %s RETURNING 1) "
            + counter_add_sql("SELECT %s::text, count(*) FROM counted"),
            [handler, message_id, MESSAGE_LOG_REDELIVERIES, counter_shards()],
        )


def message_log_delete(*, ids: Sequence[int], table: str | None = None, using: str = "default") -> int:
    """Delete the message-log rows ``ids`` (retention) of ``table`` (a partition; default: the whole
    log); return how many went.

    The same statement adds them, and their redeliveries, to the purged counters, so the
    figures of the rows now (inserted minus purged) stay right.
    """
    table = table or MessageLog._meta.db_table
    with connections[using].cursor() as cursor:
        cursor.execute(
            f"WITH deleted AS (DELETE FROM {table} WHERE id = ANY(%s::bigint[]) RETURNING redeliveries), "  # noqa: S608
            "counted AS ("
            + counter_add_sql(
                "SELECT %s::text, count(*) FROM deleted "
                "UNION ALL SELECT %s::text, coalesce(sum(redeliveries), 0) FROM deleted"
            )
            + ") SELECT count(*) FROM deleted",
            [list(ids), MESSAGE_LOG_PURGED, MESSAGE_LOG_REDELIVERIES_PURGED, counter_shards()],
        )
        return int(cursor.fetchone()[0])


def message_log_partition_count_purged(*, partition: str, using: str = "default") -> int:
    """Add the rows and redeliveries of ``partition``, about to be dropped, to the purged counters;
    return its rows.

    Call it in the transaction that drops the partition, so the counts and the drop commit
    together. The partition is locked against writes first (none are expected: its whole range
    is past the dedupe window), so nothing is counted that the drop would not take.
    """
    with connections[using].cursor() as cursor:
        cursor.execute(f"LOCK TABLE {partition} IN SHARE MODE")
        cursor.execute(
            f"WITH gone AS (SELECT count(*) AS n, coalesce(sum(redeliveries), 0) AS r FROM {partition}), "  # noqa: S608
            "counted AS ("
            + counter_add_sql("SELECT %s::text, n FROM gone UNION ALL SELECT %s::text, r FROM gone")
            + ") SELECT n FROM gone",
            [MESSAGE_LOG_PURGED, MESSAGE_LOG_REDELIVERIES_PURGED, counter_shards()],
        )
        return int(cursor.fetchone()[0])


def message_log_recount(*, using: str = "default") -> dict[str, int]:
    """Make the message log's counters agree with its rows again; return the rows and redeliveries now.

    For rows written or deleted around this module (workers of a version that did not count
    yet, during an upgrade; SQL by hand; a restore). The table is locked against writes
    (``SHARE``) while it is counted, once: consumers wait for that long. The purged counters
    are kept; the inserted ones become what is there now plus what was purged.
    """
    log, counters = MessageLog._meta.db_table, PipelineCounter._meta.db_table
    with transaction.atomic(using=using), connections[using].cursor() as cursor:
        cursor.execute(f"LOCK TABLE {log} IN SHARE MODE")
        cursor.execute(f"SELECT count(*), coalesce(sum(redeliveries), 0) FROM {log}")  # noqa: S608
        rows, redeliveries = (int(value) for value in cursor.fetchone())
        cursor.execute(
            f"SELECT name, coalesce(sum(value), 0) FROM {counters} WHERE name = ANY(%s) GROUP BY name",  # noqa: S608
            [[MESSAGE_LOG_PURGED, MESSAGE_LOG_REDELIVERIES_PURGED]],
        )
        purged = {name: int(total) for name, total in cursor.fetchall()}
        cursor.execute(
            f"DELETE FROM {counters} WHERE name = ANY(%s)",  # noqa: S608
            [[MESSAGE_LOG_INSERTED, MESSAGE_LOG_REDELIVERIES]],
        )
        cursor.execute(
            counter_add_sql("SELECT * FROM (VALUES (%s::text, %s::bigint), (%s::text, %s::bigint)) AS v"),
            [
                MESSAGE_LOG_INSERTED,
                rows + purged.get(MESSAGE_LOG_PURGED, 0),
                MESSAGE_LOG_REDELIVERIES,
                redeliveries + purged.get(MESSAGE_LOG_REDELIVERIES_PURGED, 0),
                counter_shards(),
            ],
        )
    logger.info("message log on %s recounted: %d rows, %d redeliveries", using, rows, redeliveries)
    return {"rows": rows, "redeliveries": redeliveries}
