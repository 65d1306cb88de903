"""Services of the reliability app: they write (outbox, relay, message log, dead letters)."""

import json
import logging
import uuid
from collections.abc import Iterable
from datetime import timedelta
from functools import partial
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connections, transaction
from django.db.models import F
from django.utils import timezone

from .exceptions import OutboxUsageError, PublishError
from .faults import fault_point
from .ids import message_id_new
from .models import DeadLetter, MessageLog, OutboxMessage, StreamCounter
from .publisher import publisher
from .streams import stream_position_record

logger = logging.getLogger(__name__)

ENVELOPE_VERSION = 1


def stream_seq_allocate(*, stream: str, task_name: str, queue: str, using: str = "default") -> int:
    """Return the next sequence number of ``stream``, inside the caller's transaction.

    The counter row stays locked until the caller commits, and a rollback undoes
    the increment, so a stream's numbers are gap-free. A database sequence or
    Redis INCR would not be: their increments survive a rollback and would show
    up as false gaps. Each stream has its own row, so streams do not serialize
    each other. A stream has one consumer (task and queue): the gap detection and
    the heartbeat address it.
    """
    table = StreamCounter._meta.db_table
    with connections[using].cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (stream, last_seq, task_name, queue) VALUES (%s, 1, %s, %s) "  # noqa: S608
            f"ON CONFLICT (stream) DO UPDATE SET last_seq = {table}.last_seq + 1, "
            # A counter from before streams had owners is claimed by its first user.
            f"task_name = COALESCE(NULLIF({table}.task_name, ''), EXCLUDED.task_name), "
            f"queue = COALESCE(NULLIF({table}.queue, ''), EXCLUDED.queue) "
            "RETURNING last_seq, task_name, queue",
            [stream, task_name, queue],
        )
        seq, owner_task, owner_queue = cursor.fetchone()
    if (owner_task, owner_queue) != (task_name, queue):
        raise OutboxUsageError(
            f"stream {stream!r} belongs to {owner_task} on queue {owner_queue}; "
            f"use another stream name for {task_name} on {queue}"
        )
    return int(seq)


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
    if not connections[using].in_atomic_block:
        raise OutboxUsageError(
            "outbox_enqueue must run inside transaction.atomic() so the message "
            "commits together with the write that caused it"
        )
    now = timezone.now()
    message = OutboxMessage.objects.using(using).create(
        message_id=message_id or message_id_new(),
        task_name=task_name,
        queue=queue,
        stream=stream,
        seq=stream_seq_allocate(stream=stream, task_name=task_name, queue=queue, using=using),
        payload=payload,
        created_at=now,
        # The sweep leaves a fresh row to the after-commit fast path for a moment.
        next_attempt_at=now + timedelta(seconds=settings.RELIABILITY_RELAY_GRACE_S),
    )
    if settings.RELIABILITY_RELAY_FAST_PATH:
        transaction.on_commit(
            partial(outbox_publish_after_commit, ids=[message.pk], using=using), using=using
        )
    return message


def outbox_envelope(message: OutboxMessage, *, producer_high: int | None = None) -> dict[str, Any]:
    """Return the JSON envelope a consumer receives for ``message``.

    ``high`` is the stream's high-water mark when published, so the consumer can
    see that later seqs exist (a lost tail) even if none of them arrives.
    """
    return {
        "v": ENVELOPE_VERSION,
        "message_id": str(message.message_id),
        "stream": message.stream,
        "seq": message.seq,
        "high": max(producer_high or 0, message.seq),
        "produced_at": message.created_at.isoformat(),
        "payload": message.payload,
    }


def stream_highs(*, streams: Iterable[str], using: str = "default") -> dict[str, int]:
    """Return the current last seq of each stream (committed values)."""
    rows = (
        StreamCounter.objects.using(using).filter(stream__in=set(streams)).values_list("stream", "last_seq")
    )
    return dict(rows)


def outbox_publish_after_commit(*, ids: list[int], using: str = "default") -> None:
    """Fast path: publish just-committed messages now; the relay sweep is the safety net."""
    try:
        outbox_relay_messages(ids=ids, using=using, due_only=False)
    except Exception:  # the write committed; a failed fast path only delays the message
        logger.warning("fast-path publish of outbox rows %s failed; the relay will retry", ids, exc_info=True)


def outbox_relay_batch(*, using: str = "default", limit: int | None = None) -> int:
    """Publish due pending messages (oldest first); return how many were confirmed."""
    return outbox_relay_messages(ids=None, using=using, limit=limit, due_only=True)


def _backoff(attempts: int) -> timedelta:
    seconds = min(
        settings.RELIABILITY_RELAY_BACKOFF_BASE_S * 2 ** max(attempts - 1, 0),
        settings.RELIABILITY_RELAY_BACKOFF_MAX_S,
    )
    return timedelta(seconds=seconds)


def outbox_relay_messages(
    *,
    ids: Iterable[int] | None,
    using: str = "default",
    limit: int | None = None,
    due_only: bool = True,
) -> int:
    """Publish pending outbox rows, marking each sent only after a positive confirm.

    Rows are locked with ``SKIP LOCKED`` and taken in id order, so several relays
    (and fast paths) can run at once without publishing the same row twice in
    parallel. A crash after the publish and before the commit leaves the row
    pending: it is published again, and the consumer's message log drops the copy.
    """
    limit = limit or settings.RELIABILITY_RELAY_BATCH_SIZE
    sent = 0
    with transaction.atomic(using=using):
        rows = OutboxMessage.objects.using(using).select_for_update(skip_locked=True)
        rows = rows.filter(status=OutboxMessage.Status.PENDING)
        if ids is not None:
            rows = rows.filter(pk__in=list(ids))
        if due_only:
            rows = rows.filter(next_attempt_at__lte=timezone.now())
        batch = list(rows.order_by("id")[:limit])
        highs = stream_highs(streams=(message.stream for message in batch), using=using)
        for message in batch:
            fault_point("relay.before_publish", message_id=message.message_id)
            try:
                outbox_message_publish(message, producer_high=highs.get(message.stream))
            except PublishError as exc:
                _outbox_publish_failed(message, exc, using=using)
                # One failure usually means the broker is down or refusing: stop here
                # rather than spend the whole batch on timeouts. The rest stays pending.
                break
            fault_point("relay.after_publish", message_id=message.message_id)
            now = timezone.now()
            OutboxMessage.objects.using(using).filter(pk=message.pk).update(
                status=OutboxMessage.Status.SENT, sent_at=now, last_error=""
            )
            sent += 1
            logger.debug("published message %s (%s#%d)", message.message_id, message.stream, message.seq)
    if sent and ids is None:
        logger.info("relayed %d messages", sent)
    return sent


def outbox_message_publish(message: OutboxMessage, *, producer_high: int | None) -> None:
    """Publish one outbox row with its original message_id; raise ``PublishError`` unless confirmed."""
    publisher().publish(
        task_name=message.task_name,
        queue=message.queue,
        message_id=str(message.message_id),
        envelope=outbox_envelope(message, producer_high=producer_high),
    )


def _outbox_publish_failed(message: OutboxMessage, exc: Exception, *, using: str) -> None:
    attempts = message.attempts + 1
    OutboxMessage.objects.using(using).filter(pk=message.pk).update(
        attempts=attempts,
        last_error=f"{type(exc).__name__}: {exc}"[:2000],
        next_attempt_at=timezone.now() + _backoff(attempts),
    )
    logger.warning(
        "publish of message %s failed (attempt %d), left pending: %s", message.message_id, attempts, exc
    )


def broker_topology_declare() -> list[str]:
    """Declare every exchange, quorum queue and the dead-letter queue; return the queue names."""
    return publisher().topology_declare()


def message_log_insert(
    *, handler: str, message_id: uuid.UUID, stream: str, seq: int, using: str = "default"
) -> bool:
    """Insert the message-log row first; return False when it already exists.

    ``ON CONFLICT DO NOTHING`` waits for a concurrent transaction holding the same
    key: if that one commits, this insert does nothing (a duplicate); if it rolls
    back, this one inserts. Never check-then-insert.
    """
    table = MessageLog._meta.db_table
    with connections[using].cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (handler, message_id, stream, seq, outcome, redeliveries, applied_at) "  # noqa: S608
            "VALUES (%s, %s, %s, %s, '', 0, %s) "
            "ON CONFLICT (handler, message_id) DO NOTHING RETURNING id",
            [handler, message_id, stream, seq, timezone.now()],
        )
        return cursor.fetchone() is not None


def message_log_record_outcome(
    *, handler: str, message_id: uuid.UUID, outcome: str, using: str = "default"
) -> None:
    MessageLog.objects.using(using).filter(handler=handler, message_id=message_id).update(
        outcome=outcome[:200]
    )


def message_log_count_redelivery(*, handler: str, message_id: uuid.UUID, using: str = "default") -> None:
    MessageLog.objects.using(using).filter(handler=handler, message_id=message_id).update(
        redeliveries=F("redeliveries") + 1
    )


def dead_letter_record(
    *,
    handler: str,
    reason: str,
    detail: str,
    envelope: Any,
    message_id: uuid.UUID | None = None,
    stream: str = "",
    seq: int | None = None,
    queue: str = "",
    headers: dict[str, Any] | None = None,
    body: str = "",
    using: str = "default",
) -> DeadLetter:
    """Keep a message that cannot succeed, with the reason; it is never dropped.

    One row per (handler, message_id): a message that fails again (say after a
    replay) reopens its row and counts another occurrence. Its seq counts as
    accounted for, so the reconciler does not chase it as a gap.
    """
    now = timezone.now()
    fields = {
        "reason": reason,
        "detail": detail[:10_000],
        "envelope": json_safe(envelope),
        "stream": stream,
        "seq": seq,
        "queue": queue,
        "headers": json_safe(headers),
        "body": body[:100_000],
        "updated_at": now,
    }
    with transaction.atomic(using=using):
        letter = None
        if message_id is not None:
            letter = (
                DeadLetter.objects.using(using)
                .select_for_update()
                .filter(handler=handler, message_id=message_id)
                .first()
            )
        if letter is None:
            try:
                with transaction.atomic(using=using):
                    letter = DeadLetter.objects.using(using).create(
                        handler=handler, message_id=message_id, **fields
                    )
            except IntegrityError:  # recorded concurrently: reopen that one
                letter = (
                    DeadLetter.objects.using(using)
                    .select_for_update()
                    .get(handler=handler, message_id=message_id)
                )
                letter = _dead_letter_reopen(letter, fields, using=using)
        else:
            letter = _dead_letter_reopen(letter, fields, using=using)
        if stream and seq is not None:
            stream_position_record(handler=handler, stream=stream, seq=seq, using=using)
    logger.error("dead-lettered message %s for %s: %s: %s", message_id, handler, reason, detail[:500])
    return letter


def _dead_letter_reopen(letter: DeadLetter, fields: dict[str, Any], *, using: str) -> DeadLetter:
    for name, value in fields.items():
        if value not in (None, "") or name in {"reason", "detail"}:
            setattr(letter, name, value)
    letter.status = DeadLetter.Status.OPEN
    letter.discard_reason = ""
    letter.occurrences += 1
    letter.save(using=using)
    return letter


def json_safe(value: Any) -> Any:
    """Return ``value`` if it is JSON, else its JSON rendering with unknown types as text."""
    if value is None:
        return None
    try:
        return json.loads(json.dumps(value, default=_json_default))
    except (TypeError, ValueError):
        return {"unserializable": repr(value)[:10_000]}


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)
