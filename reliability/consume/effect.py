"""The effect's transaction: dedupe, then park or apply, all committed together or not at all."""

from typing import Any

from django.db import transaction

from reliability.consume import message_log
from reliability.consume.apply import Handler, message_apply
from reliability.consume.order import message_apply_in_order, message_park
from reliability.consume.streams import stream_position_record
from reliability.envelope import Message
from reliability.models import Outcome


def message_effect(
    *, handler_name: str, handler: Handler, message: Message, envelope: Any, ordered: bool, using: str
) -> str:
    """Apply ``message`` once, in one transaction; return the outcome.

    The message-log row is inserted first: a duplicate is known by its unique key, not by a
    look-up that races a concurrent redelivery. A first delivery moves the stream's position;
    on an ordered stream a message that overtook its predecessor is parked instead of applied.
    """
    with transaction.atomic(using=using):
        if not message_log.message_dedupe(handler=handler_name, message=message, using=using):
            return Outcome.DUPLICATE
        watermark = stream_position_record(
            handler=handler_name,
            stream=message.stream,
            seq=message.seq,
            producer_high=message.producer_high,
            using=using,
        )
        if not ordered:
            return message_apply(handler_name=handler_name, handler=handler, message=message, using=using)
        if watermark < message.seq:
            return message_park(handler_name=handler_name, message=message, envelope=envelope, using=using)
        return message_apply_in_order(
            handler_name=handler_name, handler=handler, message=message, watermark=watermark, using=using
        )
