"""Services of the reliability app: they write (outbox, relay, message log, dead letters)."""

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from datetime import timedelta
from functools import partial
from typing import Any

from django.db import DatabaseError, IntegrityError, connections, transaction
from django.db.models import F, Q
from django.utils import timezone

from .conf import settings
from .exceptions import OutboxUsageError, PublishError
from .faults import fault_point
from .ids import message_id_new
from .models import DeadLetter, MessageLog, OutboxMessage, PipelineCounter, StreamCounter
from .publisher import Publish, publisher
from .signing import KIND, MESSAGE, TASK, envelope_sign
from .streams import stream_position_record

logger = logging.getLogger(__name__)

ENVELOPE_VERSION = 1
# The kind of an envelope that carries several messages (each a version-1 envelope).
BATCH = "batch"


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


# The relay loop (``reliability.relay``) listens on this channel and holds this advisory
# lock while it runs: one relay loop per database publishes, the others stand by.
RELAY_CHANNEL = "reliability_outbox"
RELAY_LOCK = (0x6265616E, 1)
_relay_seen: dict[str, tuple[float, bool]] = {}


def relay_loop_running(*, using: str = "default") -> bool:
    """Whether a relay loop holds the relay lock of this database (cached for a second)."""
    now = time.monotonic()
    checked, running = _relay_seen.get(using, (0.0, False))
    if now - checked < 1.0:
        return running
    with connections[using].cursor() as cursor:
        cursor.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND classid = %s AND objid = %s AND objsubid = 2)",
            list(RELAY_LOCK),
        )
        running = bool(cursor.fetchone()[0])
    _relay_seen[using] = (now, running)
    return running


def outbox_envelope(message: OutboxMessage, *, producer_high: int | None = None) -> dict[str, Any]:
    """Return the JSON envelope a consumer receives for ``message``.

    ``high`` is the stream's high-water mark when published, so the consumer can
    see that later seqs exist (a lost tail) even if none of them arrives. Signed
    (``reliability.signing``) together with its address, the task and kind it is
    meant for: the consumer applies nothing it cannot verify, and nothing signed for
    another task.
    """
    return envelope_sign(
        {
            "v": ENVELOPE_VERSION,
            TASK: message.task_name,
            KIND: MESSAGE,
            "message_id": str(message.message_id),
            "stream": message.stream,
            "seq": message.seq,
            "high": max(producer_high or 0, message.seq),
            "produced_at": message.created_at.isoformat(),
            "payload": message.payload,
        }
    )


def stream_highs(*, streams: Iterable[str], using: str = "default") -> dict[str, int]:
    """Return the current last seq of each stream (committed values)."""
    rows = (
        StreamCounter.objects.using(using).filter(stream__in=set(streams)).values_list("stream", "last_seq")
    )
    return dict(rows)


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


def outbox_relay_batch(*, using: str = "default", limit: int | None = None) -> int:
    """Publish due pending messages (oldest first); return how many were confirmed."""
    return outbox_relay_messages(ids=None, using=using, limit=limit, due_only=True)


def _backoff(attempts: int) -> timedelta:
    seconds = min(
        settings.RELIABILITY_RELAY_BACKOFF_BASE_S * 2 ** max(attempts - 1, 0),
        settings.RELIABILITY_RELAY_BACKOFF_MAX_S,
    )
    return timedelta(seconds=seconds)


# Whether this process's last relay window went through. A relay pass that follows a
# failure (or is this process's first) sends one message on its own first: if the
# broker refuses or the route is broken, one message learns it, not a whole window.
_path_verified: dict[str, bool] = {}


def relay_path_verified(*, using: str = "default") -> bool:
    """Whether this process's last relay window to the broker went through (False before any)."""
    return _path_verified.get(using, False)


def relay_path_failing(*, using: str = "default") -> bool:
    """Whether this process's last relay window failed (False before any)."""
    return _path_verified.get(using) is False


def _relay_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


def outbox_claim(
    *,
    ids: Iterable[int] | None,
    using: str = "default",
    limit: int,
    due_only: bool = True,
    fresh_too: bool = False,
) -> list[OutboxMessage]:
    """Claim up to ``limit`` pending rows for this relay, oldest first, and commit the claim.

    A claim is an owner and an expiry (``RELIABILITY_RELAY_CLAIM_S``), not a lock: the
    caller publishes after the claim committed, holding no database lock across the
    broker's round trips. Rows claimed by another relay are skipped until that claim
    expires; then any relay (or the beat sweep) takes them over. ``SKIP LOCKED`` keeps
    two relays claiming at the same moment from taking the same rows.
    """
    now = timezone.now()
    with transaction.atomic(using=using):
        rows = OutboxMessage.objects.using(using).select_for_update(skip_locked=True)
        rows = rows.filter(status=OutboxMessage.Status.PENDING)
        rows = rows.filter(Q(claim_expires_at__isnull=True) | Q(claim_expires_at__lt=now))
        if ids is not None:
            rows = rows.filter(pk__in=list(ids))
        if due_only:
            due = Q(next_attempt_at__lte=now)
            rows = rows.filter(due | Q(attempts=0) if fresh_too else due)
        batch = list(rows.order_by("id")[:limit])
        if batch:
            owner, expires = _relay_owner(), now + timedelta(seconds=settings.RELIABILITY_RELAY_CLAIM_S)
            OutboxMessage.objects.using(using).filter(pk__in=[row.pk for row in batch]).update(
                claimed_by=owner, claim_expires_at=expires
            )
    return batch


def outbox_relay_messages(
    *,
    ids: Iterable[int] | None,
    using: str = "default",
    limit: int | None = None,
    due_only: bool = True,
    fresh_too: bool = False,
) -> int:
    """Publish pending outbox rows, marking them sent only after a positive confirm.

    Rows are claimed first (``outbox_claim``, committed), then published with no
    transaction open, so several relays (and fast paths) can run at once without
    publishing the same row twice in parallel, and a relay cut off from the broker
    holds nothing but its own claim, for a bounded time. Rows for one task and queue
    are packed, stream by stream in seq order, into envelopes of up to
    ``RELIABILITY_ENVELOPE_MAX_MESSAGES``; a window of envelopes is put in flight at
    once and the confirms collected by delivery tag. Confirmed rows are marked sent
    in one statement; a nack, return or timeout marks only the rows of that
    envelope. A window that could not end before the claim expires is not started:
    its rows are released for the next pass. A crash after the publish and before
    the mark leaves the rows pending: they are published again once the claim
    expires, and the consumer's message log drops the copies. ``fresh_too``: also
    take rows never attempted whose grace period has not passed (the relay loop does
    not wait).
    """
    limit = limit or settings.RELIABILITY_RELAY_BATCH_SIZE
    batch = outbox_claim(ids=ids, using=using, limit=limit, due_only=due_only, fresh_too=fresh_too)
    if not batch:
        return 0
    # Start no window that could outlast the claim: past it, another relay may take the rows.
    window_s = settings.RELIABILITY_CONNECT_TIMEOUT_S + settings.RELIABILITY_CONFIRM_TIMEOUT_S
    claim_left = time.monotonic() + settings.RELIABILITY_RELAY_CLAIM_S - window_s
    sent_ids: list[int] = []
    settled: set[int] = set()
    highs = stream_highs(streams=(message.stream for message in batch), using=using)
    envelopes = outbox_envelopes_pack(batch, highs=highs, probe=not relay_path_verified(using=using))
    window = 1 if not relay_path_verified(using=using) else settings.RELIABILITY_RELAY_WINDOW
    position = 0
    try:
        while position < len(envelopes) and time.monotonic() < claim_left:
            chunk = envelopes[position : position + window]
            position += len(chunk)
            fault_point("relay.before_publish", message_id=chunk[0][1][0].message_id)
            results = _publish_window([item for item, _ in chunk])
            fault_point("relay.after_publish", message_id=chunk[0][1][0].message_id)
            failed = False
            for (_, messages), error in zip(chunk, results, strict=True):
                settled.update(message.pk for message in messages)
                if error is None:
                    sent_ids.extend(message.pk for message in messages)
                else:
                    failed = True
                    _outbox_publish_failed(messages, error, using=using)
            _path_verified[using] = not failed
            if failed:
                # The broker is down or refusing: stop here rather than spend the whole
                # batch on timeouts. The rest stays pending, unattempted.
                break
            window = settings.RELIABILITY_RELAY_WINDOW
        if sent_ids:
            fault_point("relay.before_mark_sent", message_id=batch[0].message_id)
            OutboxMessage.objects.using(using).filter(
                pk__in=sent_ids, status=OutboxMessage.Status.PENDING
            ).update(
                status=OutboxMessage.Status.SENT,
                sent_at=timezone.now(),
                last_error="",
                claimed_by="",
                claim_expires_at=None,
            )
    finally:
        unsent = [message.pk for message in batch if message.pk not in settled]
        if unsent:
            _outbox_claim_release(unsent, using=using)
    if sent_ids and ids is None:
        logger.info("relayed %d messages in %d envelopes", len(sent_ids), position)
    return len(sent_ids)


def _outbox_claim_release(ids: list[int], *, using: str) -> None:
    """Hand rows this relay claimed but did not try back to every relay at once."""
    try:
        OutboxMessage.objects.using(using).filter(pk__in=ids, claimed_by=_relay_owner()).update(
            claimed_by="", claim_expires_at=None
        )
    except DatabaseError:  # the claim then simply expires
        logger.warning("could not release the claim on %d outbox rows", len(ids), exc_info=True)


def _publish_window(items: list[Publish]) -> list[PublishError | None]:
    """Publish a window of task messages; return, per message, None (confirmed) or the error."""
    try:
        if len(items) == 1:  # one message: the plain confirmed publish
            (item,) = items
            publisher().publish(
                task_name=item.task_name, queue=item.queue, message_id=item.task_id, envelope=item.envelope
            )
            return [None]
        return publisher().publish_many(items)
    except PublishError as exc:
        return [exc] * len(items)


def outbox_envelopes_pack(
    batch: list[OutboxMessage], *, highs: dict[str, int], probe: bool = False
) -> list[tuple[Publish, list[OutboxMessage]]]:
    """Pack outbox rows into task messages: per task and queue, stream by stream in seq order.

    One row alone keeps the single-message envelope; several share a batch envelope
    in which each keeps its own message_id and seq, so dedupe, gap detection and
    replay stay per message. ``probe``: the first row goes alone, first.
    """
    packed: list[tuple[Publish, list[OutboxMessage]]] = []
    if probe and batch:
        packed.append((_publish_of([batch[0]], highs), [batch[0]]))
        batch = batch[1:]
    groups: dict[tuple[str, str], list[OutboxMessage]] = {}
    for message in batch:
        groups.setdefault((message.task_name, message.queue), []).append(message)
    size = settings.RELIABILITY_ENVELOPE_MAX_MESSAGES
    for messages in groups.values():
        messages.sort(key=lambda message: (message.stream, message.seq))
        for start in range(0, len(messages), size):
            part = messages[start : start + size]
            packed.append((_publish_of(part, highs), part))
    return packed


def _publish_of(messages: list[OutboxMessage], highs: dict[str, int]) -> Publish:
    first = messages[0]
    if len(messages) == 1:
        envelope = outbox_envelope(first, producer_high=highs.get(first.stream))
        return Publish(first.task_name, first.queue, str(first.message_id), envelope)
    return Publish(
        first.task_name,
        first.queue,
        str(uuid.uuid4()),  # the task id of the envelope; each message keeps its own id
        {
            "v": ENVELOPE_VERSION,
            "kind": BATCH,
            "messages": [outbox_envelope(m, producer_high=highs.get(m.stream)) for m in messages],
        },
    )


def outbox_message_publish(message: OutboxMessage, *, producer_high: int | None) -> None:
    """Publish one outbox row with its original message_id; raise ``PublishError`` unless confirmed."""
    publisher().publish(
        task_name=message.task_name,
        queue=message.queue,
        message_id=str(message.message_id),
        envelope=outbox_envelope(message, producer_high=producer_high),
    )


def _outbox_publish_failed(messages: list[OutboxMessage], exc: Exception, *, using: str) -> None:
    attempts = max(message.attempts for message in messages) + 1
    OutboxMessage.objects.using(using).filter(pk__in=[message.pk for message in messages]).update(
        attempts=F("attempts") + 1,
        last_error=f"{type(exc).__name__}: {exc}"[:2000],
        next_attempt_at=timezone.now() + _backoff(attempts),
        claimed_by="",
        claim_expires_at=None,
    )
    logger.warning(
        "publish of %d message(s) from %s failed (attempt %d), left pending: %s",
        len(messages),
        messages[0].message_id,
        attempts,
        exc,
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


def message_log_insert_many(*, handler: str, messages: list[Any], using: str = "default") -> int:
    """Insert the message-log rows of ``messages`` in one statement; return how many were new."""
    table = MessageLog._meta.db_table
    with connections[using].cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (handler, message_id, stream, seq, outcome, redeliveries, applied_at) "  # noqa: S608
            "SELECT %s, m, s, q, '', 0, %s FROM unnest(%s::uuid[], %s::text[], %s::bigint[]) AS u(m, s, q) "
            "ON CONFLICT (handler, message_id) DO NOTHING",
            [
                handler,
                timezone.now(),
                [message.message_id for message in messages],
                [message.stream for message in messages],
                [message.seq for message in messages],
            ],
        )
        return int(cursor.rowcount)


def message_log_record_outcomes(
    *, handler: str, outcomes: list[tuple[uuid.UUID, str]], using: str = "default"
) -> None:
    """Record the outcome of many messages in one statement."""
    table = MessageLog._meta.db_table
    with connections[using].cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} AS l SET outcome = u.o FROM unnest(%s::uuid[], %s::text[]) AS u(m, o) "  # noqa: S608
            "WHERE l.handler = %s AND l.message_id = u.m",
            [[m for m, _ in outcomes], [o[:200] for _, o in outcomes], handler],
        )


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
        "detail": storable_text(detail[:10_000]),
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
    """Return ``value`` if it is JSON, else its JSON rendering with unknown types as text.

    Text PostgreSQL cannot store (NUL, lone surrogates) is escaped: a dead letter that
    cannot be written would block the drain.
    """
    if value is None:
        return None
    try:
        return _storable(json.loads(json.dumps(value, default=_json_default)))
    except (TypeError, ValueError, RecursionError):
        return {"unserializable": storable_text(repr(value)[:10_000])}


def storable_text(text: str) -> str:
    """``text`` with what PostgreSQL refuses in text and jsonb escaped: NUL and lone surrogates."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def _storable(value: Any) -> Any:
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, list):
        return [_storable(item) for item in value]
    if isinstance(value, dict):
        return {_storable(key): _storable(item) for key, item in value.items()}
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def pipeline_counter_add(*, name: str, by: int = 1, using: str = "default") -> None:
    """Add ``by`` to the event counter ``name`` (created at 0), in one statement.

    An upsert, so concurrent processes add to the same row without a lost update.
    """
    table = PipelineCounter._meta.db_table
    with connections[using].cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (name, value, updated_at) VALUES (%s, %s, %s) "  # noqa: S608
            f"ON CONFLICT (name) DO UPDATE SET value = {table}.value + EXCLUDED.value, "
            "updated_at = EXCLUDED.updated_at",
            [name, by, timezone.now()],
        )
