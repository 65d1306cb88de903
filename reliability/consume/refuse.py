"""Dead-letter: record a delivery that can never succeed as it is, so that it can be acked.

An envelope that is not a well-formed, authentic message of this task is refused whole
(``envelope_refuse``): nothing of it is trusted. A trusted message that expired or that the
handler refuses for good is recorded with its stream and seq (``message_dead_letter``), and on
an ordered stream the messages parked behind it go on.
"""

from typing import Any

from celery import Task

from reliability.consume import dead_letter
from reliability.consume.ack import delivery_queue
from reliability.consume.apply import Handler
from reliability.consume.order import parked_release
from reliability.envelope import Message, Unauthentic
from reliability.exceptions import InvalidEnvelope
from reliability.models import DeadLetter, Outcome


def envelope_refuse(
    *, handler_name: str, envelope: Any, error: InvalidEnvelope | Unauthentic, using: str
) -> str:
    """Record an envelope refused by ``message_verify`` (or a batch's) as a dead letter."""
    # Nothing of it is trusted: no message_id, stream or seq is recorded as its own. An
    # authentic message addressed to another task is refused the same way: its stream
    # and seq belong to that task, and recorded here they would be gaps that never heal.
    unauthentic = isinstance(error, Unauthentic)
    dead_letter.dead_letter_record(
        handler=handler_name,
        reason=DeadLetter.Reason.UNAUTHENTIC if unauthentic else DeadLetter.Reason.INVALID_ENVELOPE,
        detail=str(error),
        envelope=envelope,
        using=using,
    )
    return Outcome.DEAD_LETTERED


def message_dead_letter(
    task: Task,
    message: Message,
    envelope: Any,
    *,
    reason: str,
    detail: str,
    using: str,
    handler: Handler,
    ordered: bool,
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
    if ordered:
        parked_release(handler_name=task.name, handler=handler, stream=message.stream, using=using)
    return Outcome.DEAD_LETTERED
