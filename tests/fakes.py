"""The one stand-in the unit tests share: never in a test that claims a delivery guarantee."""

from types import SimpleNamespace
from typing import Any


def fake_task(name: str) -> Any:
    """The parts of a bound Celery task that ``message_consume`` reads: its name, and a request
    delivered once (``retries`` 0, no ``delivery_info``: acked as a task, not by hand)."""
    return SimpleNamespace(name=name, request=SimpleNamespace(retries=0, delivery_info={}))
