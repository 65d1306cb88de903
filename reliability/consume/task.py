"""The consumer middleware: make a Celery task apply each message exactly once.

Decorate a handler with ``@exactly_once_task(name=..., queue=...)``. The task it
creates receives the outbox envelope and, in one database transaction:

1. inserts the message-log row for ``(task name, message_id)`` *first*;
2. if that row already existed, the delivery is a duplicate: the effect is
   skipped, the redelivery counted, and the message acknowledged;
3. otherwise calls the handler, whose writes (and any outbox messages it
   enqueues) commit together with the message-log row.

Only after commit does Celery acknowledge (``acks_late``); a worker killed before
that makes the broker redeliver (``reject_on_worker_lost``), and step 2 catches
the copy when the first attempt had committed.

Failures: an envelope that is not well formed can never succeed, so it is
recorded as a dead letter and acknowledged. A transient database error
(connection lost, deadlock, serialization failure) rolls back and the message is
requeued after a short pause; the quorum queue's delivery limit bounds the loop
and dead-letters what still fails. A message the handler declares poison
(``PoisonMessage``, or a value the database refuses: ``DataError``) fails the same
way on every delivery: it is recorded as a dead letter at once and acknowledged,
so the messages behind it keep flowing, and can be replayed once fixed. Any other
exception may be a hiccup or a bug: it is requeued the same way as a transient
error, after a pause that grows with the deliveries, until the delivery limit
dead-letters it (the drain records it with the broker's reason).
"""

import logging
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, NoReturn

from celery import Task, shared_task
from celery.exceptions import Reject
from django.db import DatabaseError, DataError, InterfaceError, OperationalError, connections, transaction
from django.utils import timezone

from reliability.conf import settings
from reliability.consume import dead_letter, message_log
from reliability.consume.streams import (
    RunFit,
    stream_high_record,
    stream_position_record,
    stream_runs_record,
    stream_watermark_lock,
)
from reliability.envelope import (
    BATCH,
    HEARTBEAT,
    MESSAGE,
    Message,
    Unauthentic,
    batch_parse,
    envelope_kind,
    envelope_parse,
    envelope_verify,
    heartbeat_parse,
)
from reliability.exceptions import InvalidEnvelope, PoisonMessage
from reliability.faults import fault_point
from reliability.ids import ClockMovedBackwards, WorkerIdUnavailable
from reliability.models import DeadLetter, Outcome, ParkedMessage

logger = logging.getLogger(__name__)

# Worth another try: the database went away, or ids cannot be issued for a moment.
_TRANSIENT_ERRORS = (OperationalError, InterfaceError, ClockMovedBackwards, WorkerIdUnavailable)
# SQLSTATE classes worth retrying: serialization failure, deadlock.
_TRANSIENT_SQLSTATES = {"40001", "40P01"}
_DATABASE_POLL_S = 1.0  # how often a delivery waiting for its database asks it again


Handler = Callable[[Message], str | None]
# Applies several messages inside the caller's transaction, in the order given (set-based
# SQL rather than a round trip per message); returns one outcome per message.
BatchHandler = Callable[[list[Message]], list[str]]


class _TakeOneByOne(Exception):
    """A batch that cannot take the one-transaction path: apply its messages one by one."""


class _Overtaken(_TakeOneByOne):
    """A stream's run does not continue its watermark: its predecessor may be committing now."""


# An overtaking batch usually waits on a predecessor that another pool process is
# committing this very moment (a batch of 100 takes 50-100 ms): retries that add up to a
# few of those spare both batches the slow path, where each message is parked alone.
_OVERTAKEN_RETRIES_S = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16)


def heartbeat_apply(*, handler_name: str, envelope: dict[str, Any], using: str) -> str:
    """Record a stream heartbeat: the producer's high-water mark, for lost-tail detection."""
    heartbeat = heartbeat_parse(envelope)
    with transaction.atomic(using=using):
        stream_high_record(
            handler=handler_name, stream=heartbeat.stream, producer_high=heartbeat.high, using=using
        )
    return Outcome.HEARTBEAT


def message_age_s(message: Message) -> float | None:
    """Return how long ago the message was produced, or None when the envelope does not say."""
    try:
        produced = datetime.fromisoformat(message.produced_at)
    except ValueError:
        return None
    if produced.tzinfo is None:
        return None
    return (timezone.now() - produced).total_seconds()


def delivery_queue(task: Task) -> str:
    """Return the queue a message came from (routing key = queue name in this topology)."""
    info = getattr(task.request, "delivery_info", None) or {}
    return str(info.get("routing_key") or getattr(task, "queue", "") or "")


def delivery_count(task: Task) -> int:
    """Return how often the broker delivered this message before (quorum queues say so)."""
    request = task.request
    raw = vars(request).get("x-delivery-count")
    if raw is None:
        raw = (getattr(request, "headers", None) or {}).get("x-delivery-count")
    try:
        return int(raw or 0)
    except (TypeError, ValueError):
        return 0


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, _TRANSIENT_ERRORS):
        return True
    cause = exc.__cause__
    return isinstance(exc, DatabaseError) and getattr(cause, "sqlstate", None) in _TRANSIENT_SQLSTATES


def _requeue(task: Task, exc: Exception, *, what: str, using: str) -> NoReturn:
    """Hand the delivery back to the broker after a pause that grows with its deliveries.

    If the failure was the database being away and it still does not answer, wait for it
    first (up to ``RELIABILITY_DATABASE_WAIT_MAX_S``): requeued at once, a message would spend
    its deliveries on the outage and the broker would dead-letter it on the delivery limit.
    """
    deliveries = delivery_count(task)
    pause = min(0.1 * 2 ** min(deliveries, 6), settings.RELIABILITY_REQUEUE_PAUSE_MAX_S)
    log = logger.warning if _is_transient(exc) else logger.error
    log(
        "%s for %s failed (delivery %d), requeueing in %.1fs: %s: %s",
        what,
        task.name,
        deliveries + 1,
        pause,
        type(exc).__name__,
        exc,
    )
    if (
        settings.RELIABILITY_DATABASE_WAIT_MAX_S > 0
        and _connection_lost(exc)
        and not _database_answers(using)
    ):
        _database_wait(using, task=task)
    else:
        time.sleep(pause)
    raise Reject(exc, requeue=True) from exc


def _connection_lost(exc: BaseException) -> bool:
    """An error a database that went away raises (not a conflict such as a deadlock)."""
    sqlstate = getattr(exc.__cause__, "sqlstate", None)
    return isinstance(exc, OperationalError | InterfaceError) and sqlstate not in _TRANSIENT_SQLSTATES


def _database_answers(using: str) -> bool:
    """Whether database ``using`` answers a query now, on a new connection."""
    connection = connections[using]
    if connection.in_atomic_block:  # not ours to close: leave the decision to the caller's pause
        return True
    try:
        connection.close()
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except DatabaseError:
        connection.close()
        return False
    return True


def _database_wait(using: str, *, task: Task) -> None:
    """Poll database ``using`` every second until it answers or the wait's bound passes."""
    bound = settings.RELIABILITY_DATABASE_WAIT_MAX_S
    logger.warning(
        "database %s unreachable: %s waits up to %.0fs for it before requeueing", using, task.name, bound
    )
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        time.sleep(min(_DATABASE_POLL_S, max(0.0, deadline - time.monotonic())))
        if _database_answers(using):
            logger.warning("database %s answers again: requeueing", using)
            return


def _apply(handler_name: str, handler: Handler, message: Message, *, using: str) -> str:
    fault_point("consume.before_handler", message_id=message.message_id)
    outcome = handler(message) or Outcome.APPLIED
    fault_point("consume.after_handler", message_id=message.message_id)  # its locks are held here
    message_log.message_log_record_outcome(
        handler=handler_name, message_id=message.message_id, outcome=outcome, using=using
    )
    return outcome


def message_park(*, handler_name: str, message: Message, envelope: Any, using: str) -> str:
    """Keep a message whose predecessor has not been applied yet (ordered handlers)."""
    ParkedMessage.objects.using(using).create(
        handler=handler_name,
        stream=message.stream,
        seq=message.seq,
        message_id=message.message_id,
        envelope=envelope,
    )
    message_log.message_log_record_outcome(
        handler=handler_name, message_id=message.message_id, outcome=Outcome.PARKED, using=using
    )
    logger.info(
        "message %s (%s#%d) parked until its predecessor arrives",
        message.message_id,
        message.stream,
        message.seq,
    )
    return Outcome.PARKED


def parked_apply(
    *, handler_name: str, handler: Handler, stream: str, after: int, upto: int, using: str
) -> int:
    """Apply, in sequence order, the parked messages that the watermark now covers."""
    if upto <= after:
        return 0
    parked = list(
        ParkedMessage.objects.using(using)
        .select_for_update()
        .filter(handler=handler_name, stream=stream, seq__gt=after, seq__lte=upto)
        .order_by("seq")
    )
    for row in parked:
        message = envelope_parse(row.envelope)
        try:
            with transaction.atomic(using=using):
                _apply(handler_name, handler, message, using=using)
        except PoisonMessage as exc:
            dead_letter.dead_letter_record(
                handler=handler_name,
                reason=DeadLetter.Reason.HANDLER_FAILED,
                detail=f"{type(exc).__name__}: {exc}",
                envelope=row.envelope,
                message_id=message.message_id,
                using=using,
            )
        row.delete(using=using)
        logger.info("parked message %s (%s#%d) applied in order", message.message_id, stream, message.seq)
    return len(parked)


def _dead_letter(
    task: Task,
    message: Message,
    envelope: Any,
    *,
    reason: str,
    detail: str,
    using: str,
    handler: Handler | None = None,
    ordered: bool = False,
) -> str:
    """Record a well-formed message that cannot succeed as it is, and let it be acked.

    Its seq counts as accounted for; on an ordered stream the messages parked
    behind it are applied now.
    """
    dead_letter.dead_letter_record(
        handler=task.name,
        reason=reason,
        detail=detail,
        envelope=envelope,
        message_id=message.message_id,
        stream=message.stream,
        seq=message.seq,
        queue=delivery_queue(task),
        using=using,
    )
    if ordered and handler is not None:
        with transaction.atomic(using=using):
            watermark = stream_watermark_lock(handler=task.name, stream=message.stream, using=using)
            parked_apply(
                handler_name=task.name,
                handler=handler,
                stream=message.stream,
                after=0,
                upto=watermark,
                using=using,
            )
    return Outcome.DEAD_LETTERED


def message_consume(
    *,
    task: Task,
    envelope: Any,
    handler: Handler,
    using: str,
    ordered: bool = False,
    in_batch: bool = False,
) -> str:
    """Apply ``envelope`` through ``handler`` exactly once; return the outcome.

    ``in_batch``: the envelope came inside a batch envelope, which carries data
    messages only (a heartbeat there is refused, never applied).
    """
    handler_name = task.name
    kind = envelope_kind(envelope)
    try:
        if kind == HEARTBEAT and not in_batch:
            envelope_verify(envelope, task=handler_name, kind=HEARTBEAT)
            return heartbeat_apply(handler_name=handler_name, envelope=envelope, using=using)
        if kind != MESSAGE:
            # Not a data message (a heartbeat inside a batch, a kind this version does not
            # know): judged by its address, which refuses it, not by a data message's shape.
            envelope_verify(envelope, task=handler_name, kind=MESSAGE)
        message = envelope_parse(envelope)
        envelope_verify(envelope, task=handler_name, kind=MESSAGE)
    except (InvalidEnvelope, Unauthentic) as exc:
        # Nothing of it is trusted: no message_id, stream or seq is recorded as its own. An
        # authentic message addressed to another task is refused the same way: its stream
        # and seq belong to that task, and recorded here they would be gaps that never heal.
        unauthentic = isinstance(exc, Unauthentic)
        dead_letter.dead_letter_record(
            handler=handler_name,
            reason=DeadLetter.Reason.UNAUTHENTIC if unauthentic else DeadLetter.Reason.INVALID_ENVELOPE,
            detail=str(exc),
            envelope=envelope,
            using=using,
        )
        return Outcome.DEAD_LETTERED
    age = message_age_s(message)
    if age is not None and age > settings.RELIABILITY_MAX_MESSAGE_AGE_S:
        # Its message-log row may be gone (retention): applying it could apply it twice.
        return _dead_letter(
            task,
            message,
            envelope,
            reason=DeadLetter.Reason.EXPIRED,
            detail=f"produced {age:.0f}s ago, more than RELIABILITY_MAX_MESSAGE_AGE_S",
            using=using,
            handler=handler,
            ordered=ordered,
        )
    try:
        with transaction.atomic(using=using):
            first = message_log.message_log_insert(
                handler=handler_name,
                message_id=message.message_id,
                stream=message.stream,
                seq=message.seq,
                using=using,
            )
            if first:
                watermark = stream_position_record(
                    handler=handler_name,
                    stream=message.stream,
                    seq=message.seq,
                    producer_high=message.producer_high,
                    using=using,
                )
                if ordered and watermark < message.seq:
                    outcome = message_park(
                        handler_name=handler_name, message=message, envelope=envelope, using=using
                    )
                else:
                    if ordered:  # parked predecessors the watermark now covers go first
                        parked_apply(
                            handler_name=handler_name,
                            handler=handler,
                            stream=message.stream,
                            after=0,
                            upto=message.seq - 1,
                            using=using,
                        )
                    outcome = _apply(handler_name, handler, message, using=using)
                    if ordered:
                        parked_apply(
                            handler_name=handler_name,
                            handler=handler,
                            stream=message.stream,
                            after=message.seq,
                            upto=watermark,
                            using=using,
                        )
            else:
                outcome = Outcome.DUPLICATE
                message_log.message_log_count_redelivery(
                    handler=handler_name, message_id=message.message_id, using=using
                )
    except Exception as exc:  # noqa: BLE001 - each failure is requeued or dead-lettered below
        # A data exception (a value the database refuses: out of range, text it cannot hold)
        # fails the same way on every delivery: poison, not a hiccup.
        if not isinstance(exc, PoisonMessage | DataError):
            # Maybe transient (a database hiccup), maybe a bug: requeue after a pause that
            # grows with the deliveries. The queue's delivery limit bounds the loop and
            # dead-letters what keeps failing; the drain records it with the reason.
            _requeue(task, exc, what=f"message {message.message_id}", using=using)
        return _dead_letter(
            task,
            message,
            envelope,
            reason=DeadLetter.Reason.HANDLER_FAILED,
            detail=f"{type(exc).__name__}: {exc}",
            using=using,
            handler=handler,
            ordered=ordered,
        )
    if outcome == Outcome.DUPLICATE:
        logger.info("duplicate delivery of message %s to %s suppressed", message.message_id, handler_name)
    fault_point("consume.after_commit", message_id=message.message_id)
    return outcome


def batch_consume(
    *,
    task: Task,
    envelope: dict[str, Any],
    handler: Handler,
    batch_handler: BatchHandler | None,
    using: str,
    ordered: bool = False,
) -> str:
    """Apply a batch envelope: in one transaction when it can, else message by message.

    The one-transaction path inserts every message-log row in one statement, moves
    each stream's position past the run in one statement, and applies the effects
    through ``batch_handler`` (or ``handler`` per message, still in the same
    transaction). It is taken only in the common case: every message is new, well
    formed and fresh, and each stream's run follows its watermark directly (no gap,
    nothing parked). Anything else (a duplicate inside or across batches, a message
    that overtook its predecessor, a poison message, a bug) rolls the transaction
    back and hands each message to ``message_consume``, which dedupes, parks or
    dead-letters it on its own, so one bad message neither loses, doubles nor blocks
    the others. A transient database error requeues the whole envelope: whatever
    was applied is a duplicate when it comes back.
    """
    try:
        items = batch_parse(envelope)
    except InvalidEnvelope as exc:
        dead_letter.dead_letter_record(
            handler=task.name,
            reason=DeadLetter.Reason.INVALID_ENVELOPE,
            detail=str(exc),
            envelope=envelope,
            using=using,
        )
        return Outcome.DEAD_LETTERED
    try:
        outcomes = _batch_apply_retrying(task.name, items, handler, batch_handler, using=using)
    except _TakeOneByOne as reason:
        logger.info("batch of %d for %s applied one by one: %s", len(items), task.name, reason)
    except Exception as exc:  # noqa: BLE001 - requeued if transient, else applied one by one
        if _is_transient(exc):
            _requeue(task, exc, what=f"batch of {len(items)}", using=using)
        logger.info(
            "batch of %d for %s failed (%s: %s); applying it one by one",
            len(items),
            task.name,
            type(exc).__name__,
            exc,
        )
    else:
        fault_point("consume.after_commit", message_id=outcomes[0][0])
        return f"batch of {len(items)} applied"
    results = [
        message_consume(
            task=task, envelope=item, handler=handler, using=using, ordered=ordered, in_batch=True
        )
        for item in items
    ]
    return f"batch of {len(items)} one by one: " + ", ".join(sorted(set(results)))


def _batch_apply_retrying(
    handler_name: str, items: list[Any], handler: Handler, batch_handler: BatchHandler | None, *, using: str
) -> list[tuple[uuid.UUID, str]]:
    for pause in _OVERTAKEN_RETRIES_S:
        try:
            return _batch_apply(handler_name, items, handler, batch_handler, using=using)
        except _Overtaken:
            time.sleep(pause)  # rolled back: the predecessor's transaction can take the locks
    return _batch_apply(handler_name, items, handler, batch_handler, using=using)


def _batch_apply(
    handler_name: str,
    items: list[Any],
    handler: Handler,
    batch_handler: BatchHandler | None,
    *,
    using: str,
) -> list[tuple[uuid.UUID, str]]:
    """The one-transaction path of ``batch_consume``; raise ``_TakeOneByOne`` when it does not fit."""
    try:
        messages = [envelope_parse(item) for item in items]
        for item in items:
            envelope_verify(item, task=handler_name, kind=MESSAGE)
    except (InvalidEnvelope, Unauthentic) as exc:
        raise _TakeOneByOne(f"a malformed or unauthentic message: {exc}") from exc
    if len({message.message_id for message in messages}) < len(messages):
        raise _TakeOneByOne("a message twice in one batch")
    for message in messages:
        age = message_age_s(message)
        if age is not None and age > settings.RELIABILITY_MAX_MESSAGE_AGE_S:
            raise _TakeOneByOne(f"message {message.message_id} expired")
    runs: dict[str, list[Message]] = {}
    for message in messages:
        runs.setdefault(message.stream, []).append(message)
    with transaction.atomic(using=using):
        fault_point("consume.before_handler", message_id=messages[0].message_id)
        inserted = message_log.message_log_insert_many(
            handler=handler_name,
            entries=[(message.message_id, message.stream, message.seq) for message in messages],
            using=using,
        )
        if inserted < len(messages):
            raise _TakeOneByOne(f"{len(messages) - inserted} message(s) seen before")
        positions = {
            stream: ([message.seq for message in run], max((message.producer_high or 0) for message in run))
            for stream, run in runs.items()
        }
        fit = stream_runs_record(handler=handler_name, runs=positions, using=using)
        if fit is RunFit.AHEAD:
            raise _Overtaken("a stream's run starts past its next seq: its predecessor has not arrived")
        if fit is not RunFit.FITS:
            raise _TakeOneByOne("a stream does not continue right after its watermark")
        if batch_handler is not None:
            outcomes = batch_handler(messages)
        else:
            outcomes = [handler(message) or Outcome.APPLIED for message in messages]
        fault_point("consume.after_handler", message_id=messages[0].message_id)
        if len(outcomes) != len(messages):
            raise RuntimeError(
                f"batch handler of {handler_name} returned {len(outcomes)} outcomes for {len(messages)}"
            )
        applied = [(message.message_id, outcome) for message, outcome in zip(messages, outcomes, strict=True)]
        message_log.message_log_record_outcomes(handler=handler_name, outcomes=applied, using=using)
    return applied


class ExactlyOnceTask(Task):
    """Base class of exactly-once consumer tasks: late acks, requeue on a lost worker."""

    acks_late = True
    reject_on_worker_lost = True
    ignore_result = True
    reliability_database = "default"


def exactly_once_task(
    *,
    name: str,
    queue: str,
    using: str = "default",
    ordered: bool = False,
    batch_handler: BatchHandler | None = None,
    **options: Any,
) -> Callable[[Handler], Task]:
    """Turn ``handler(message) -> outcome`` into an exactly-once Celery task named ``name``.

    ``using`` is the database alias holding both the handler's data and the
    message log, so that they commit in one transaction. ``ordered``: apply each
    stream strictly in sequence order, however many workers consume it; a message
    that overtakes its predecessor is parked until the predecessor is applied.
    ``batch_handler``: the set-based equivalent of ``handler`` for a batch envelope
    (see ``batch_consume``); without it a batch calls ``handler`` per message, in
    one transaction.
    """

    def decorate(handler: Handler) -> Task:
        def consume(task: Task, envelope: Any) -> str:
            try:
                if envelope_kind(envelope) == BATCH:
                    return batch_consume(
                        task=task,
                        envelope=envelope,
                        handler=handler,
                        batch_handler=batch_handler,
                        using=using,
                        ordered=ordered,
                    )
                return message_consume(
                    task=task, envelope=envelope, handler=handler, using=using, ordered=ordered
                )
            except Exception as exc:  # a Reject (already a requeue) is not transient: re-raised as is
                # The paths outside the effect's transaction (a heartbeat, recording a dead
                # letter) meet the same database hiccups. Escaping, the error would fail the
                # task and the broker would dead-letter a message that only had to wait.
                if _is_transient(exc):
                    _requeue(task, exc, what="delivery", using=using)
                raise

        consume.__name__ = handler.__name__
        consume.__doc__ = handler.__doc__
        return shared_task(
            name=name, queue=queue, base=ExactlyOnceTask, bind=True, reliability_database=using, **options
        )(consume)

    return decorate
