"""The batch's one-transaction path: every message of a batch envelope logged, positioned and
applied in one transaction, or none of them (``TakeOneByOne``: the caller applies them one by one).
"""

import time
import uuid
from typing import Any

from django.db import transaction

from reliability.consume import message_log
from reliability.consume.apply import BatchHandler, Handler
from reliability.consume.streams import RunFit, stream_runs_record
from reliability.consume.verify import message_expired, message_verify
from reliability.envelope import Message, Unauthentic
from reliability.exceptions import InvalidEnvelope
from reliability.faults import fault_point
from reliability.models import Outcome


class TakeOneByOne(Exception):
    """A batch that cannot take the one-transaction path: apply its messages one by one."""


class Overtaken(TakeOneByOne):
    """A stream's run does not continue its watermark: its predecessor may be committing now."""


# An overtaking batch usually waits on a predecessor that another pool process is
# committing this very moment (a batch of 100 takes 50-100 ms): retries that add up to a
# few of those spare both batches the slow path, where each message is parked alone.
_OVERTAKEN_RETRIES_S = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16)


def batch_apply_retrying(
    handler_name: str, items: list[Any], handler: Handler, batch_handler: BatchHandler | None, *, using: str
) -> list[tuple[uuid.UUID, str]]:
    """``batch_apply``, tried again a few times, briefly, while it is overtaken."""
    for pause in _OVERTAKEN_RETRIES_S:
        try:
            return batch_apply(handler_name, items, handler, batch_handler, using=using)
        except Overtaken:
            time.sleep(pause)  # rolled back: the predecessor's transaction can take the locks
    return batch_apply(handler_name, items, handler, batch_handler, using=using)


def batch_apply(
    handler_name: str,
    items: list[Any],
    handler: Handler,
    batch_handler: BatchHandler | None,
    *,
    using: str,
) -> list[tuple[uuid.UUID, str]]:
    """Apply a batch's messages in one transaction; raise ``TakeOneByOne`` when it does not fit."""
    messages = batch_verify(handler_name, items)
    with transaction.atomic(using=using):
        fault_point("consume.before_handler", message_id=messages[0].message_id)
        _batch_log(handler_name, messages, using=using)
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


def batch_verify(handler_name: str, items: list[Any]) -> list[Message]:
    """Return a batch's messages if each is new to the batch, well formed, authentic and fresh."""
    try:
        messages = [message_verify(item, handler_name=handler_name) for item in items]
    except (InvalidEnvelope, Unauthentic) as exc:
        raise TakeOneByOne(f"a malformed or unauthentic message: {exc}") from exc
    if len({message.message_id for message in messages}) < len(messages):
        raise TakeOneByOne("a message twice in one batch")
    for message in messages:
        if message_expired(message):
            raise TakeOneByOne(f"message {message.message_id} expired")
    return messages


def _batch_log(handler_name: str, messages: list[Message], *, using: str) -> None:
    """Log every message (dedupe) and move each stream past its run, in the caller's transaction."""
    inserted = message_log.message_log_insert_many(
        handler=handler_name,
        entries=[(message.message_id, message.stream, message.seq) for message in messages],
        using=using,
    )
    if inserted < len(messages):
        raise TakeOneByOne(f"{len(messages) - inserted} message(s) seen before")
    runs: dict[str, list[Message]] = {}
    for message in messages:
        runs.setdefault(message.stream, []).append(message)
    positions = {
        stream: ([message.seq for message in run], max((message.producer_high or 0) for message in run))
        for stream, run in runs.items()
    }
    fit = stream_runs_record(handler=handler_name, runs=positions, using=using)
    if fit is RunFit.AHEAD:
        raise Overtaken("a stream's run starts past its next seq: its predecessor has not arrived")
    if fit is not RunFit.FITS:
        raise TakeOneByOne("a stream does not continue right after its watermark")
