"""The producer side's writes: a message enters the outbox in the caller's transaction.

Each message takes the next seq of its stream (gap-free, in the same transaction); after
commit the fast path hands the new rows to the relay.
"""

import json
import logging
import uuid
from collections.abc import Sequence
from datetime import timedelta
from functools import partial
from typing import Any

from django.db import IntegrityError, connections, transaction
from django.utils import timezone

from reliability.conf import settings
from reliability.exceptions import OutboxUsageError
from reliability.ids import message_id_new
from reliability.models import OutboxMessage, StreamCounter
from reliability.produce.relay import RELAY_CHANNEL, outbox_relay_messages, relay_loop_running

logger = logging.getLogger(__name__)


def stream_seq_allocate(
    *, stream: str, task_name: str, queue: str, count: int = 1, using: str = "default"
) -> int:
    """Take the next ``count`` sequence numbers of ``stream``; return the last of them.

    Runs inside the caller's transaction. The counter row stays locked until the
    caller commits, and a rollback undoes the increment, so a stream's numbers are
    gap-free. A database sequence or Redis INCR would not be: their increments
    survive a rollback and would show up as false gaps. Each stream has its own
    row, so streams do not serialize each other. A stream has one consumer (task
    and queue): the gap detection and the heartbeat address it.
    """
    return stream_seqs_allocate(counts={stream: count}, task_name=task_name, queue=queue, using=using)[stream]


def stream_seqs_allocate(
    *, counts: dict[str, int], task_name: str, queue: str, using: str = "default"
) -> dict[str, int]:
    """``stream_seq_allocate`` for several streams in one statement: ``{stream: last seq taken}``.

    The counter rows are locked in stream order, the one lock order of every caller.
    """
    table = StreamCounter._meta.db_table
    streams = sorted(counts)
    with connections[using].cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (stream, last_seq, task_name, queue) "  # noqa: S608
            "SELECT s, n, %s, %s FROM unnest(%s::text[], %s::bigint[]) AS u(s, n) "
            f"ON CONFLICT (stream) DO UPDATE SET last_seq = {table}.last_seq + EXCLUDED.last_seq, "
            # A counter from before streams had owners is claimed by its first user.
            f"task_name = COALESCE(NULLIF({table}.task_name, ''), EXCLUDED.task_name), "
            f"queue = COALESCE(NULLIF({table}.queue, ''), EXCLUDED.queue) "
            "RETURNING stream, last_seq, task_name, queue",
            [task_name, queue, streams, [counts[stream] for stream in streams]],
        )
        rows = cursor.fetchall()
    for stream, _, owner_task, owner_queue in rows:
        if (owner_task, owner_queue) != (task_name, queue):
            raise OutboxUsageError(
                f"stream {stream!r} belongs to {owner_task} on queue {owner_queue}; "
                f"use another stream name for {task_name} on {queue}"
            )
    return {stream: int(last) for stream, last, _, _ in rows}


def stream_queue_move(*, stream: str, queue: str, using: str = "default") -> None:
    """Send a stream's future messages to another queue (only once the stream is drained)."""
    StreamCounter.objects.using(using).filter(stream=stream).update(queue=queue)
    logger.info("stream %s now goes to queue %s", stream, queue)


def outbox_enqueue(
    *,
    task_name: str,
    queue: str,
    stream: str,
    payload: dict[str, Any],
    message_id: uuid.UUID | None = None,
    using: str = "default",
) -> OutboxMessage:
    """Record a message to be published once the caller's transaction commits.

    Must run inside ``transaction.atomic(using=...)``: the message commits with
    the caller's write or not at all. Publishing starts after commit. Pass
    ``message_id`` (from ``reliability.ids.message_id_new``) when the caller's
    own row must reference the message before it exists.
    """
    (message,) = outbox_enqueue_many(
        task_name=task_name,
        queue=queue,
        messages=[(stream, payload, message_id)],
        using=using,
    )
    return message


def outbox_enqueue_many(
    *,
    task_name: str,
    queue: str,
    messages: Sequence[tuple[str, dict[str, Any], uuid.UUID | None]],
    using: str = "default",
) -> list[OutboxMessage]:
    """Record several messages ``(stream, payload, message_id or None)`` in one INSERT.

    The same rules as ``outbox_enqueue``; each stream's seqs are allocated in one
    statement, in the order given.
    """
    if not connections[using].in_atomic_block:
        raise OutboxUsageError(
            "outbox_enqueue must run inside transaction.atomic() so the message "
            "commits together with the write that caused it"
        )
    wanted: dict[str, int] = {}
    for stream, _, _ in messages:
        wanted[stream] = wanted.get(stream, 0) + 1
    if len(wanted) == 1:  # a producer's usual case
        ((stream, count),) = wanted.items()
        last = {
            stream: stream_seq_allocate(
                stream=stream, task_name=task_name, queue=queue, count=count, using=using
            )
        }
    else:
        last = stream_seqs_allocate(counts=wanted, task_name=task_name, queue=queue, using=using)
    next_seq = {stream: last[stream] - count + 1 for stream, count in wanted.items()}
    now = timezone.now()
    # The sweep leaves a fresh row to the after-commit fast path (or relay loop) for a moment.
    grace = now + timedelta(seconds=settings.RELIABILITY_RELAY_GRACE_S)
    created = []
    for stream, payload, message_id in messages:
        created.append(
            OutboxMessage(
                message_id=message_id or message_id_new(),
                task_name=task_name,
                queue=queue,
                stream=stream,
                seq=next_seq[stream],
                payload=payload,
                created_at=now,
                next_attempt_at=grace,
            )
        )
        next_seq[stream] += 1
    _outbox_insert(created, using=using)
    if settings.RELIABILITY_RELAY_FAST_PATH:
        transaction.on_commit(
            partial(outbox_publish_after_commit, ids=[row.pk for row in created], using=using), using=using
        )
    return created


def outbox_enqueue_with_row(
    *,
    insert_sql: str,
    params: dict[str, Any],
    task_name: str,
    queue: str,
    stream: str,
    payload: dict[str, Any],
    payload_columns: dict[str, str],
    message_id: uuid.UUID,
    using: str = "default",
) -> tuple[Any, ...] | None:
    """Insert the caller's row and its message in one statement: one round trip, no transaction.

    ``insert_sql`` is the caller's ``INSERT ... RETURNING ...`` with ``%(name)s`` placeholders
    (``params``). It may insert nothing — ``WHERE`` a precondition fails, or ``ON CONFLICT DO
    NOTHING`` — and then nothing at all is written and None is returned. Otherwise the message
    is ``payload`` plus, for each ``payload_columns`` item, a column the insert returned (its
    generated id, say), on ``stream``'s next seq, and the returned row is returned.

    One statement is atomic on its own: the row, the stream's seq and the message commit
    together or not at all, inside the caller's transaction or, outside one, as the
    statement's own. The stream's counter row stays locked only as long as that transaction.
    A stream that belongs to another task or queue is refused by the database (a message
    without a seq cannot be inserted) and raises ``OutboxUsageError``.
    """
    clash = sorted(name for name in params if name.startswith("_outbox_"))
    if clash:
        raise OutboxUsageError(f"parameter names starting with _outbox_ are the library's: {clash}")
    columns = ", ".join(
        f"%(_outbox_key_{n})s::text, inserted.{column}" for n, column in enumerate(payload_columns.values())
    )
    counter, outbox = StreamCounter._meta.db_table, OutboxMessage._meta.db_table
    now = timezone.now()
    sql = (
        f"WITH inserted AS ({insert_sql}), "  # noqa: S608 - the caller's statement, table names, no input
        # The stream's next seq, for the row if there is one; its owner's only (else no seq).
        f"seq AS (INSERT INTO {counter} AS c (stream, last_seq, task_name, queue) "
        "SELECT %(_outbox_stream)s::text, 1, %(_outbox_task)s::text, %(_outbox_queue)s::text FROM inserted "
        "ON CONFLICT (stream) DO UPDATE SET last_seq = c.last_seq + 1, "
        "task_name = COALESCE(NULLIF(c.task_name, ''), EXCLUDED.task_name), "
        "queue = COALESCE(NULLIF(c.queue, ''), EXCLUDED.queue) "
        "WHERE c.task_name IN ('', EXCLUDED.task_name) AND c.queue IN ('', EXCLUDED.queue) "
        "RETURNING last_seq), "
        f"message AS (INSERT INTO {outbox} (message_id, task_name, queue, stream, seq, payload, status, "
        "attempts, last_error, next_attempt_at, created_at, claimed_by) "
        "SELECT %(_outbox_message_id)s::uuid, %(_outbox_task)s::text, %(_outbox_queue)s::text, "
        "%(_outbox_stream)s::text, seq.last_seq, "
        f"%(_outbox_payload)s::jsonb || jsonb_build_object({columns or ''}), %(_outbox_status)s::text, 0, '', "
        "%(_outbox_grace)s::timestamptz, %(_outbox_now)s::timestamptz, '' FROM inserted LEFT JOIN seq ON true "
        "RETURNING id), "
        "wake AS (SELECT pg_notify(%(_outbox_channel)s::text, '') FROM message) "
        "SELECT inserted.*, (SELECT id FROM message), (SELECT count(*) FROM wake) FROM inserted"
    )
    values = {
        **params,
        "_outbox_task": task_name,
        "_outbox_queue": queue,
        "_outbox_stream": stream,
        "_outbox_payload": json.dumps(payload),
        "_outbox_message_id": message_id,
        "_outbox_status": OutboxMessage.Status.PENDING,
        "_outbox_grace": now + timedelta(seconds=settings.RELIABILITY_RELAY_GRACE_S),
        "_outbox_now": now,
        "_outbox_channel": RELAY_CHANNEL,
        **{f"_outbox_key_{n}": key for n, key in enumerate(payload_columns)},
    }
    try:
        with connections[using].cursor() as cursor:
            cursor.execute(sql, values)
            found = cursor.fetchone()
    except IntegrityError as exc:
        if 'null value in column "seq"' not in str(exc):
            raise
        # No query for the owner here: inside the caller's transaction, this one has failed.
        raise OutboxUsageError(
            f"stream {stream!r} belongs to another task or queue than {task_name} on {queue} "
            f"(its counter row in {counter} names the owner); use another stream name"
        ) from exc
    if found is None:
        return None
    *row, outbox_id, _ = found
    if settings.RELIABILITY_RELAY_FAST_PATH:
        transaction.on_commit(partial(outbox_publish_after_commit, ids=[outbox_id], using=using), using=using)
    return tuple(row)


def _outbox_insert(rows: list[OutboxMessage], *, using: str) -> None:
    """Insert outbox rows and wake the relay loop, in one statement (the producer's hot path).

    The notification is delivered when the transaction commits, and only then.
    """
    table = OutboxMessage._meta.db_table
    with connections[using].cursor() as cursor:
        cursor.execute(
            f"WITH wake AS (SELECT pg_notify(%s, '')) INSERT INTO {table} "  # noqa: S608
            "(message_id, task_name, queue, stream, seq, payload, status, attempts, last_error, "
            "next_attempt_at, created_at, claimed_by) "
            "SELECT u.m, %s, %s, u.s, u.q, u.p::jsonb, %s, 0, '', %s, %s, '' "
            "FROM unnest(%s::uuid[], %s::text[], %s::bigint[], %s::text[]) AS u(m, s, q, p) CROSS JOIN wake "
            "RETURNING id, message_id",
            [
                RELAY_CHANNEL,
                rows[0].task_name,
                rows[0].queue,
                OutboxMessage.Status.PENDING,
                rows[0].next_attempt_at,
                rows[0].created_at,
                [row.message_id for row in rows],
                [row.stream for row in rows],
                [row.seq for row in rows],
                [json.dumps(row.payload) for row in rows],
            ],
        )
        ids = dict((message_id, pk) for pk, message_id in cursor.fetchall())
    for row in rows:
        row.pk = ids[row.message_id]
        row._state.adding, row._state.db = False, using


def outbox_publish_after_commit(*, ids: list[int], using: str = "default") -> None:
    """Fast path: publish just-committed messages now; the relay sweep is the safety net.

    Left to the relay loop when one runs: it packs many messages per envelope.
    """
    if relay_loop_running(using=using):
        return
    try:
        outbox_relay_messages(ids=ids, using=using, due_only=False)
    except Exception:  # the write committed; a failed fast path only delays the message
        logger.warning("fast-path publish of outbox rows %s failed; the relay will retry", ids, exc_info=True)
