"""Counters kept in the database (``PipelineCounter``): added to in the writer's statement, summed when read.

A counter is a few rows, one per shard. A writer adds to the shard of its database session
(``pg_backend_pid()`` modulo ``RELIABILITY_COUNTER_SHARDS``), in the same statement as the
write it counts (a data-modifying ``WITH``): the count commits or rolls back with that write,
costs no round trip of its own, and the row lock it takes, held until commit, is shared only
with the sessions of the same shard, not with every consumer. A reader sums each name's rows:
a handful, however long the history.

Each shard only grows (``pipeline_counter_nonnegative``); a figure that must also go down (the
message log's rows now) is the difference of two counters (inserted minus purged).
"""

from django.db import connections

from reliability.conf import settings
from reliability.models import PipelineCounter

# The message log's counters (``reliability.consume.message_log`` adds to them; each "ever").
MESSAGE_LOG_INSERTED = "message_log_inserted"
MESSAGE_LOG_PURGED = "message_log_purged"
MESSAGE_LOG_REDELIVERIES = "message_log_redeliveries"
MESSAGE_LOG_REDELIVERIES_PURGED = "message_log_redeliveries_purged"
MESSAGE_LOG_COUNTERS = frozenset(
    {MESSAGE_LOG_INSERTED, MESSAGE_LOG_PURGED, MESSAGE_LOG_REDELIVERIES, MESSAGE_LOG_REDELIVERIES_PURGED}
)


def counter_shards() -> int:
    return max(int(settings.RELIABILITY_COUNTER_SHARDS), 1)


def counter_add_sql(source: str) -> str:
    """SQL that adds each ``(name, amount)`` row of the query ``source`` to this session's shard of ``name``.

    Rows whose amount is 0 touch nothing (no row lock for a write that counted nothing). Names
    are added in order, so two statements that add to the same rows lock them in the same
    order. Its parameters: those of ``source``, then the number of shards (``counter_shards()``).
    Used alone or as a ``WITH`` item beside the write it counts.
    """
    table = PipelineCounter._meta.db_table
    return (
        f"INSERT INTO {table} AS c (name, shard, value, updated_at) "  # noqa: S608 - no user input
        f"SELECT a.name, s.shard, a.amount, now() FROM ({source}) AS a(name, amount) "
        "CROSS JOIN (SELECT pg_backend_pid() %% %s) AS s(shard) "
        "WHERE a.amount > 0 ORDER BY a.name "
        "ON CONFLICT (name, shard) DO UPDATE SET value = c.value + EXCLUDED.value, updated_at = EXCLUDED.updated_at"
    )


def pipeline_counter_add(*, name: str, by: int = 1, using: str = "default") -> None:
    """Add ``by`` (0 or more) to the counter ``name``, in one statement, in the caller's transaction."""
    if by < 0:
        raise ValueError(f"a counter only grows: cannot add {by} to {name}")
    with connections[using].cursor() as cursor:
        cursor.execute(counter_add_sql("SELECT %s::text, %s::bigint"), [name, by, counter_shards()])


def counter_totals(*, using: str = "default") -> dict[str, int]:
    """Return every counter of database ``using``: its shards summed."""
    table = PipelineCounter._meta.db_table
    with connections[using].cursor() as cursor:
        cursor.execute(f"SELECT name, sum(value) FROM {table} GROUP BY name")  # noqa: S608
        return {name: int(total) for name, total in cursor.fetchall()}
