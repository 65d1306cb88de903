"""Heartbeats: record the producer's high-water mark of a stream, for lost-tail detection."""

from typing import Any

from django.db import transaction

from reliability.consume.streams import stream_high_record
from reliability.envelope import HEARTBEAT, envelope_verify, heartbeat_parse
from reliability.models import Outcome


def heartbeat_consume(*, handler_name: str, envelope: dict[str, Any], using: str) -> str:
    """Verify a stream heartbeat addressed to ``handler_name`` and record its high.

    Raise ``Unauthentic`` or ``InvalidEnvelope`` (the caller dead-letters it) unless it is one.
    """
    envelope_verify(envelope, task=handler_name, kind=HEARTBEAT)
    heartbeat = heartbeat_parse(envelope)
    with transaction.atomic(using=using):
        stream_high_record(
            handler=handler_name, stream=heartbeat.stream, producer_high=heartbeat.high, using=using
        )
    return Outcome.HEARTBEAT
