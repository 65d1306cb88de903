"""The stand-ins the unit tests share: never in a test that claims a delivery guarantee."""

from types import SimpleNamespace
from typing import Any

from reliability.envelope import Message
from reliability.ids import message_id_new


def fake_task(name: str) -> Any:
    """The parts of a bound Celery task that ``message_consume`` reads: its name, and a request
    delivered once (``retries`` 0, no ``delivery_info``: acked as a task, not by hand)."""
    return SimpleNamespace(name=name, request=SimpleNamespace(retries=0, delivery_info={}))


def fake_message(payload: dict[str, Any], *, stream: str = "deductions.1", seq: int = 1) -> Message:
    """A message as the consumer hands it to a handler, with a new id: never enqueued or published."""
    return Message(message_id=message_id_new(), stream=stream, seq=seq, produced_at="", payload=payload)
