"""Time partitions of the tables that grow with every message: the outbox and the message log.

Both are PostgreSQL range-partitioned tables keyed on ``message_id``. A UUIDv7 (the default id)
begins with its 48-bit Unix millisecond, and PostgreSQL compares ``uuid`` values byte by byte, so
the range ``[uuid(t0 << 80), uuid(t1 << 80))`` holds exactly the UUIDv7 ids made in ``[t0, t1)``:
a partition per time slice, while the unique keys that contain ``message_id`` (``message_id`` in
the outbox, ``(handler, message_id)`` in the message log) stay unique across all of them, because
one id always routes to one partition. Retention drops a partition once its whole slice is past
the window (``retention_purge``): no row-by-row DELETE, no dead tuples, no bloat.

A ``DEFAULT`` partition takes every id no slice holds: ids of the other generators (a UUIDv8
carrying a snowflake, Redis or database id does not begin with the time), and ids made by a clock
far ahead of the partitions made so far. It is the safety net that keeps an insert from ever
failing for want of a partition; retention deletes its old rows in bounded batches as before.

Partitions are made ahead (``RELIABILITY_PARTITIONS_AHEAD`` slices of
``RELIABILITY_PARTITION_WIDTH_S``), by the migration that creates the tables and then by every
retention run. A slice is made as a plain table, filled with the rows of its range that the
default partition holds (normally none), and attached, in one transaction: so a slice whose ids
landed in the default partition first (beat stopped for days) is still made, never refused.

Written here rather than with django-postgres-extra's partitioning manager or pg_partman: see
the README ("Retention"). Every statement is plain PostgreSQL 13+ DDL.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from django.db import DatabaseError, OperationalError, connections, transaction
from django.db.backends.utils import CursorWrapper

__all__ = [
    "Partition",
    "partition_bound",
    "partition_default_create",
    "partitions_default_table",
    "partitions_drop",
    "partitions_ensure",
    "partitions_list",
]

logger = logging.getLogger(__name__)

# DROP of a partition takes ACCESS EXCLUSIVE on its parent, and while it waits for that lock
# every insert into the table queues behind it. So an attempt is made only when no transaction
# that holds the parent is older than OLD_HOLDER_MS (one that old may run long: waiting behind it
# would stall the pipeline for nothing), it waits at most LOCK_TIMEOUT_MS (the pipeline's own
# transactions are shorter), and it is tried DROP_ATTEMPTS times, DROP_PAUSE_S apart. What it
# could not drop, the next run drops. (DETACH ... CONCURRENTLY would need no such lock, but
# PostgreSQL refuses it on a table with a default partition.)
LOCK_TIMEOUT_MS = 200
OLD_HOLDER_MS = 100
DROP_ATTEMPTS = 10
DROP_PAUSE_S = 0.3
_BOUND = re.compile(r"FROM \('([0-9a-f-]{36})'\) TO \('([0-9a-f-]{36})'\)")


def partition_bound(ms: int) -> uuid.UUID:
    """The smallest UUID whose leading 48 bits are the Unix millisecond ``ms``."""
    return uuid.UUID(int=max(ms, 0) << 80)


def _ms(bound: str) -> int:
    return uuid.UUID(bound).int >> 80


@dataclass(frozen=True)
class Partition:
    """One time slice of a partitioned table: message ids made in ``[from_ms, to_ms)``."""

    name: str
    from_ms: int
    to_ms: int

    @property
    def to_time(self) -> datetime:
        return datetime.fromtimestamp(self.to_ms / 1000, tz=UTC)


def partitions_default_table(table: str) -> str:
    return f"{table}_default"


def partitions_list(*, table: str, using: str = "default") -> list[Partition]:
    """The time slices of ``table`` (its default partition left out), oldest first."""
    with connections[using].cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass",
            [table],
        )
        rows = cursor.fetchall()
    slices = []
    for name, bound in rows:
        match = _BOUND.search(bound or "")
        if match:
            slices.append(Partition(name=name, from_ms=_ms(match.group(1)), to_ms=_ms(match.group(2))))
    return sorted(slices, key=lambda p: p.from_ms)


def _keys_and_indexes_copy(cursor: CursorWrapper, *, table: str, partition: str, suffix: str) -> None:
    """Give ``partition`` the keys and indexes of ``table``, named after the parent's plus ``suffix``.

    ATTACH adopts them instead of making its own, so a unique violation names the constraint
    (``outbox_message_id_unique_p...``): what the tests, logs and operators look for.
    """
    cursor.execute(
        "SELECT con.conname, pg_get_constraintdef(con.oid) FROM pg_constraint con "
        "WHERE con.conrelid = %s::regclass AND con.contype IN ('p', 'u') ORDER BY con.conname",
        [table],
    )
    for name, definition in cursor.fetchall():
        cursor.execute(f"ALTER TABLE {partition} ADD CONSTRAINT {name}_{suffix} {definition}")
    cursor.execute(
        "SELECT i.relname, pg_get_indexdef(x.indexrelid) FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
        "WHERE x.indrelid = %s::regclass AND NOT EXISTS "
        "(SELECT 1 FROM pg_constraint con WHERE con.conindid = x.indexrelid) ORDER BY i.relname",
        [table],
    )
    for name, definition in cursor.fetchall():
        # "CREATE INDEX name ON ONLY public.table USING ..." -> the same on the partition.
        using = definition[definition.index(" USING ") :]
        cursor.execute(f"CREATE INDEX {name}_{suffix} ON {partition}{using}")


def partition_default_create(*, table: str, using: str = "default") -> None:
    """Make the default partition of ``table``, which takes every id no time slice holds."""
    default = partitions_default_table(table)
    with transaction.atomic(using=using), connections[using].cursor() as cursor:
        cursor.execute(f"CREATE TABLE {default} (LIKE {table} INCLUDING CONSTRAINTS)")
        _keys_and_indexes_copy(cursor, table=table, partition=default, suffix="default")
        cursor.execute(f"ALTER TABLE {table} ATTACH PARTITION {default} DEFAULT")


def _create(*, table: str, from_ms: int, to_ms: int, using: str) -> Partition:
    suffix = f"p{from_ms}"
    name = f"{table}_{suffix}"
    default = partitions_default_table(table)
    low, high = str(partition_bound(from_ms)), str(partition_bound(to_ms))
    with transaction.atomic(using=using), connections[using].cursor() as cursor:
        # LIKE copies the columns, NOT NULL and CHECK constraints; the keys and indexes are made
        # before the rows come. Rows of this range that the default partition caught move here
        # first, or ATTACH would refuse the slice (it checks the default partition holds none).
        cursor.execute(f"CREATE TABLE {name} (LIKE {table} INCLUDING CONSTRAINTS)")
        _keys_and_indexes_copy(cursor, table=table, partition=name, suffix=suffix)
        cursor.execute(
            f"WITH moved AS (DELETE FROM {default} WHERE message_id >= '{low}' AND message_id < '{high}' "  # noqa: S608
            f"RETURNING *) INSERT INTO {name} SELECT * FROM moved"
        )
        moved = cursor.rowcount
        cursor.execute(f"ALTER TABLE {table} ATTACH PARTITION {name} FOR VALUES FROM ('{low}') TO ('{high}')")
    if moved:
        logger.warning("partition %s made late: %d rows moved in from %s", name, moved, default)
    return Partition(name=name, from_ms=from_ms, to_ms=to_ms)


def partitions_ensure(
    *,
    table: str,
    now_ms: int,
    width_s: float,
    ahead: int,
    since_ms: int | None = None,
    using: str = "default",
) -> list[Partition]:
    """Make the slices of ``table`` that cover ``[since_ms or now_ms, now_ms + ahead x width_s)``; return them.

    Slices are aligned to multiples of the width since the epoch, and begin where the newest
    existing slice ends, so a change of width applies from the next slice on; a gap before
    ``since_ms`` (a migration of old rows) is filled as well.
    """
    width_ms = max(int(width_s * 1000), 1)
    existing = partitions_list(table=table, using=using)
    start = since_ms if since_ms is not None else now_ms
    start -= start % width_ms
    end = now_ms + ahead * width_ms
    made = []
    cursor_ms = start
    for part in existing:
        if part.from_ms > cursor_ms and cursor_ms < end:
            # A hole before this slice (never made, or made at another width): fill it up to it.
            while cursor_ms < min(part.from_ms, end):
                upper = min(cursor_ms - cursor_ms % width_ms + width_ms, part.from_ms)
                made.append(_create(table=table, from_ms=cursor_ms, to_ms=upper, using=using))
                cursor_ms = upper
        cursor_ms = max(cursor_ms, part.to_ms)
    while cursor_ms < end:
        upper = cursor_ms - cursor_ms % width_ms + width_ms
        made.append(_create(table=table, from_ms=cursor_ms, to_ms=upper, using=using))
        cursor_ms = upper
    if made:
        logger.info("made %d partitions of %s, up to %s", len(made), table, made[-1].to_time.isoformat())
    return made


def partitions_drop(
    *,
    table: str,
    partitions: list[Partition],
    before: Callable[[CursorWrapper, Partition], bool] | None = None,
    using: str = "default",
) -> list[str]:
    """Drop each of ``partitions`` of ``table`` in its own short transaction; return the names dropped.

    ``before(cursor, partition)`` runs first in that transaction (to count what goes, or to
    refuse: it returns False to keep the partition). A partition whose lock could not be had in
    ``DROP_ATTEMPTS`` tries of ``LOCK_TIMEOUT_MS`` each is left for the next run.
    """
    dropped = []
    for part in partitions:
        for attempt in range(1, DROP_ATTEMPTS + 1):
            try:
                with transaction.atomic(using=using), connections[using].cursor() as cursor:
                    cursor.execute(f"SET LOCAL lock_timeout = {LOCK_TIMEOUT_MS}")
                    if _old_lock_holder(cursor, table=table):
                        raise _Busy(f"a transaction older than {OLD_HOLDER_MS} ms holds {table}")
                    if before is not None and not before(cursor, part):
                        break
                    cursor.execute(f"DROP TABLE {part.name}")
            except (OperationalError, _Busy) as exc:  # lock_timeout, or not tried: the table is held
                if attempt == DROP_ATTEMPTS:
                    logger.warning(
                        "partition %s of %s not dropped (the next run retries): %s", part.name, table, exc
                    )
                else:
                    time.sleep(DROP_PAUSE_S)
                continue
            except DatabaseError as exc:
                logger.warning(
                    "partition %s of %s not dropped (the next run retries): %s", part.name, table, exc
                )
                break
            dropped.append(part.name)
            break
    return dropped


class _Busy(Exception):
    """A drop not attempted: it would have queued the table's inserts behind a long transaction."""


def _old_lock_holder(cursor: CursorWrapper, *, table: str) -> bool:
    """Whether another session's transaction older than ``OLD_HOLDER_MS`` holds a lock on ``table``.

    A session of another role shows no ``xact_start`` to a role without ``pg_read_all_stats``:
    it is not counted, and the attempt's ``lock_timeout`` still bounds the wait.
    """
    cursor.execute(
        "SELECT 1 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'relation' AND l.relation = %s::regclass AND l.granted "
        "AND l.pid <> pg_backend_pid() AND a.xact_start < clock_timestamp() - make_interval(secs => %s) LIMIT 1",
        [table, OLD_HOLDER_MS / 1000],
    )
    return cursor.fetchone() is not None
