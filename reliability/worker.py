"""Celery worker pieces: a consumer that never acknowledges a message it cannot decode."""

import logging
from typing import Any

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
