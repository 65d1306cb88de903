"""Verify: take a delivery's envelope as a message of this task, or say why not.

Before anything touches the database: the envelope must be a well-formed data message
(``InvalidEnvelope`` otherwise), signed for this task (``Unauthentic`` otherwise), and young
enough that its message-log row cannot have been dropped by retention (``message_expired``).
"""

from datetime import datetime
from typing import Any

from django.utils import timezone

from reliability.conf import settings
from reliability.envelope import MESSAGE, Message, envelope_kind, envelope_parse, envelope_verify


def message_verify(envelope: Any, *, handler_name: str) -> Message:
    """Return the message ``envelope`` carries for task ``handler_name``.

    Raise ``InvalidEnvelope`` or ``Unauthentic`` saying why it is not one.
    """
    if envelope_kind(envelope) != MESSAGE:
        # Not a data message (a heartbeat inside a batch, a kind this version does not
        # know): judged by its address, which refuses it, not by a data message's shape.
        envelope_verify(envelope, task=handler_name, kind=MESSAGE)
    message = envelope_parse(envelope)
    envelope_verify(envelope, task=handler_name, kind=MESSAGE)
    return message


def message_age_s(message: Message) -> float | None:
    """Return how long ago the message was produced, or None when the envelope does not say."""
    try:
        produced = datetime.fromisoformat(message.produced_at)
    except ValueError:
        return None
    if produced.tzinfo is None:
        return None
    return (timezone.now() - produced).total_seconds()


def message_expired(message: Message) -> str | None:
    """Say why ``message`` is too old to apply, or None when it is not.

    Its message-log row may be gone (retention): applying it could apply it twice.
    """
    age = message_age_s(message)
    if age is None or age <= settings.RELIABILITY_MAX_MESSAGE_AGE_S:
        return None
    return f"produced {age:.0f}s ago, more than RELIABILITY_MAX_MESSAGE_AGE_S"
