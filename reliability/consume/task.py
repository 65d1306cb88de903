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

Each step has its home in this package: ``verify`` (well formed, authentic, addressed here,
fresh), the effect's transaction in ``effect`` (dedupe in ``message_log``, ``order`` parks or
lets through, ``apply`` calls the handler), ``refuse`` (dead-letter), ``ack`` (acknowledge or
requeue), ``heartbeat``, and the batch's one-transaction path in ``batch``. This module is the
Celery face and the two paths through those steps: ``message_consume`` and ``batch_consume``.
"""

import logging
from collections.abc import Callable
from functools import partial
from typing import Any

from celery import Task, shared_task
from django.db import DataError

from reliability.consume.ack import delivery_requeue, error_is_transient
from reliability.consume.apply import BatchHandler, Handler
from reliability.consume.batch import TakeOneByOne, batch_apply_retrying
from reliability.consume.effect import message_effect
from reliability.consume.heartbeat import heartbeat_consume
from reliability.consume.refuse import envelope_refuse, message_dead_letter
from reliability.consume.verify import message_expired, message_verify
from reliability.envelope import BATCH, HEARTBEAT, Unauthentic, batch_parse, envelope_kind
from reliability.exceptions import InvalidEnvelope, PoisonMessage
from reliability.faults import fault_point
from reliability.models import DeadLetter, Outcome

logger = logging.getLogger(__name__)


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
    try:
        if envelope_kind(envelope) == HEARTBEAT and not in_batch:
            return heartbeat_consume(handler_name=handler_name, envelope=envelope, using=using)
        message = message_verify(envelope, handler_name=handler_name)
    except (InvalidEnvelope, Unauthentic) as exc:
        return envelope_refuse(handler_name=handler_name, envelope=envelope, error=exc, using=using)
    dead_letter = partial(
        message_dead_letter, task, message, envelope, using=using, handler=handler, ordered=ordered
    )
    expired = message_expired(message)
    if expired:
        return dead_letter(reason=DeadLetter.Reason.EXPIRED, detail=expired)
    try:
        outcome = message_effect(
            handler_name=handler_name,
            handler=handler,
            message=message,
            envelope=envelope,
            ordered=ordered,
            using=using,
        )
    except Exception as exc:  # noqa: BLE001 - each failure is requeued or dead-lettered below
        # A data exception (a value the database refuses: out of range, text it cannot hold)
        # fails the same way on every delivery: poison, not a hiccup.
        if not isinstance(exc, PoisonMessage | DataError):
            # Maybe transient (a database hiccup), maybe a bug: requeue after a pause that
            # grows with the deliveries. The queue's delivery limit bounds the loop and
            # dead-letters what keeps failing; the drain records it with the reason.
            delivery_requeue(task, exc, what=f"message {message.message_id}", using=using)
        return dead_letter(reason=DeadLetter.Reason.HANDLER_FAILED, detail=f"{type(exc).__name__}: {exc}")
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
        return envelope_refuse(handler_name=task.name, envelope=envelope, error=exc, using=using)
    try:
        outcomes = batch_apply_retrying(task.name, items, handler, batch_handler, using=using)
    except TakeOneByOne as reason:
        logger.info("batch of %d for %s applied one by one: %s", len(items), task.name, reason)
    except Exception as exc:  # noqa: BLE001 - requeued if transient, else applied one by one
        if error_is_transient(exc):
            delivery_requeue(task, exc, what=f"batch of {len(items)}", using=using)
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
                if error_is_transient(exc):
                    delivery_requeue(task, exc, what="delivery", using=using)
                raise

        consume.__name__ = handler.__name__
        consume.__doc__ = handler.__doc__
        return shared_task(
            name=name, queue=queue, base=ExactlyOnceTask, bind=True, reliability_database=using, **options
        )(consume)

    return decorate
