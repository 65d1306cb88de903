"""Celery worker pieces: a consumer that never acknowledges a message it cannot decode, and the relay loop."""

import logging
from typing import Any

from celery import bootsteps
from celery.worker.consumer import Consumer

logger = logging.getLogger(__name__)


class DeadLetteringConsumer(Consumer):
    """Reject (not ack) an undecodable message, so the broker dead-letters it.

    Celery's default acknowledges a body it cannot decode (bad JSON, a content
    type outside ``accept_content`` such as pickle): the message would be gone.
    Rejecting without requeue hands it to the queue's dead-letter exchange; the
    dead-letter drain then records it with its raw body.
    """

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        logger.error(
            "cannot decode message %s (content type %s): %s; dead-lettering it",
            message.properties.get("correlation_id"),
            message.content_type,
            exc,
        )
        message.reject(requeue=False)


class OutboxRelayStep(bootsteps.StartStopStep):
    """Run the outbox relay loop (``reliability.relay``) in the worker's main process.

    Every worker starts one loop per database; one of them is active at a time.
    ``RELIABILITY_RELAY_LOOP=false`` leaves publishing to the after-commit fast path
    and the beat sweep.
    """

    # After the pool: its children are forked before the loop's thread exists.
    requires = ("celery.worker.components:Pool",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.loops: list[Any] = []

    def include_if(self, parent: Any) -> bool:
        from django.conf import settings

        return bool(settings.RELIABILITY_RELAY_LOOP)

    def start(self, parent: Any) -> None:
        from django.conf import settings

        from .reconciler import reliability_databases
        from .relay import RelayLoop

        linger = settings.RELIABILITY_RELAY_LINGER_MS / 1000
        self.loops = [RelayLoop(using=alias, linger_s=linger) for alias in reliability_databases()]
        for loop in self.loops:
            loop.start()

    def stop(self, parent: Any) -> None:
        for loop in self.loops:
            loop.stop()
        self.loops = []

    shutdown = stop


def worker_steps_install(app: Any) -> None:
    """Add the reliability app's worker steps to a Celery app (``project/celery.py`` does)."""
    app.steps["worker"].add(OutboxRelayStep)
