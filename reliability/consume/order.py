"""Order and park: an ordered handler applies each stream strictly in sequence order.

A message that overtakes its predecessor is parked (``message_park``) in the transaction that
logs it; when the watermark reaches it (its predecessor applied or dead-lettered), the parked
messages the watermark covers are applied in seq order (``parked_apply``).
"""

import logging
from typing import Any

from django.db import transaction

from reliability.consume import dead_letter, message_log
from reliability.consume.apply import Handler, message_apply
from reliability.consume.streams import stream_watermark_lock
from reliability.envelope import Message, envelope_parse
from reliability.exceptions import PoisonMessage
from reliability.models import DeadLetter, Outcome, ParkedMessage

logger = logging.getLogger(__name__)


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


def message_apply_in_order(
    *, handler_name: str, handler: Handler, message: Message, watermark: int, using: str
) -> str:
    """Apply ``message`` after the parked predecessors it follows and before those it lets through."""
    stream = message.stream
    parked_apply(
        handler_name=handler_name, handler=handler, stream=stream, after=0, upto=message.seq - 1, using=using
    )
    outcome = message_apply(handler_name=handler_name, handler=handler, message=message, using=using)
    parked_apply(
        handler_name=handler_name,
        handler=handler,
        stream=stream,
        after=message.seq,
        upto=watermark,
        using=using,
    )
    return outcome


def parked_release(*, handler_name: str, handler: Handler, stream: str, using: str) -> None:
    """Apply what was parked behind a message just dead-lettered: its seq is accounted for."""
    with transaction.atomic(using=using):
        watermark = stream_watermark_lock(handler=handler_name, stream=stream, using=using)
        parked_apply(
            handler_name=handler_name, handler=handler, stream=stream, after=0, upto=watermark, using=using
        )


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
                message_apply(handler_name=handler_name, handler=handler, message=message, using=using)
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
