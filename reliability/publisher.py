"""Confirmed, mandatory publishing of outbox messages to RabbitMQ.

A message counts as published only when the broker confirmed it (``basic.ack``)
and did not return it as unroutable (``basic.return``, because it is published
``mandatory``). Anything else raises a ``PublishError`` and the caller leaves the
outbox row pending.

Each process keeps one connection (re-opened after a fork or an error). After a
connection failure a short circuit breaker makes further publishes fail at once
instead of each waiting for a connect timeout: the relay sweep retries later.
"""

import logging
import os
import threading
import time
from typing import Any

from amqp.exceptions import MessageNacked
from celery import current_app
from django.conf import settings
from kombu import Connection, Producer

from .exceptions import BrokerUnavailable, PublishError, PublishNacked, PublishReturned, PublishTimeout
from .topology import dead_letter_queue, topology_declare

logger = logging.getLogger(__name__)

_CIRCUIT_OPEN_S = 1.0


class ConfirmedPublisher:
    """Publish Celery task messages with confirms and ``mandatory`` on one connection."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._connection: Connection | None = None
        self._producer: Producer | None = None
        self._returned: list[str] = []
        self._circuit_open_until = 0.0

    def _on_return(self, exc: Exception, exchange: str, routing_key: str, message: Any) -> None:
        self._returned.append(f"{exc} (exchange={exchange!r}, routing_key={routing_key!r})")

    def _connect(self) -> Producer:
        if self._pid != os.getpid():  # forked: the parent's socket is not ours
            self._connection, self._producer, self._pid = None, None, os.getpid()
        if self._producer is not None:
            return self._producer
        if time.monotonic() < self._circuit_open_until:
            raise BrokerUnavailable("broker unreachable a moment ago; leaving it to the relay")
        app = current_app
        # Several ';'-separated URLs are cluster nodes: try each once, round robin.
        connection = Connection(
            app.conf.broker_url,
            connect_timeout=settings.RELIABILITY_CONNECT_TIMEOUT_S,
            transport_options={"confirm_publish": True},
            failover_strategy="round-robin",
            heartbeat=0,
        )
        try:
            connection.ensure_connection(
                max_retries=len(app.conf.broker_url.split(";")),
                interval_start=0,
                interval_step=0,
                timeout=settings.RELIABILITY_CONNECT_TIMEOUT_S,
            )
            topology_declare(connection, app.conf.task_queues, self._dead_letter_queues())
            producer = Producer(connection.channel(), on_return=self._on_return, auto_declare=False)
        except Exception as exc:
            connection.release()
            self._circuit_open_until = time.monotonic() + _CIRCUIT_OPEN_S
            raise BrokerUnavailable(f"cannot connect to the broker: {exc}") from exc
        self._connection, self._producer = connection, producer
        return producer

    @staticmethod
    def _dead_letter_queues() -> list[Any]:
        return dead_letter_queue(
            exchange=settings.RELIABILITY_DEAD_LETTER_EXCHANGE,
            queue=settings.RELIABILITY_DEAD_LETTER_QUEUE,
            routing_keys=[queue.routing_key for queue in current_app.conf.task_queues],
            replicas=settings.RELIABILITY_QUORUM_REPLICAS,
        )

    def topology_declare(self) -> list[str]:
        """Declare the topology now (it is also declared on every new connection)."""
        with self._lock:
            self.close()
            self._circuit_open_until = 0.0
            self._connect()
        names = [queue.name for queue in current_app.conf.task_queues]
        return [*names, settings.RELIABILITY_DEAD_LETTER_QUEUE]

    def close(self) -> None:
        if self._connection is not None:
            try:
                self._connection.release()
            except Exception:
                logger.debug("error while closing the publisher connection", exc_info=True)
        self._connection, self._producer = None, None

    def publish(self, *, task_name: str, queue: str, message_id: str, envelope: dict[str, Any]) -> None:
        """Publish one task message and return only once the broker confirmed it."""
        with self._lock:
            reused = self._producer is not None and self._pid == os.getpid()
            try:
                self._publish_once(task_name, queue, message_id, envelope)
            except BrokerUnavailable:
                if not reused:
                    raise
                # The kept connection had died (broker restart, idle cut): one fresh try.
                # If the failed attempt did reach the broker, the consumer drops the copy.
                self._circuit_open_until = 0.0
                self._publish_once(task_name, queue, message_id, envelope)

    def _publish_once(self, task_name: str, queue: str, message_id: str, envelope: dict[str, Any]) -> None:
        producer = self._connect()
        self._returned.clear()
        try:
            current_app.send_task(
                task_name,
                args=[envelope],
                task_id=message_id,
                queue=queue,
                producer=producer,
                mandatory=True,
                retry=False,
                declare=[],
                delivery_mode=2,
                confirm_timeout=settings.RELIABILITY_CONFIRM_TIMEOUT_S,
            )
        except Exception as exc:
            raise self._publish_error(exc, message_id) from exc
        if self._returned:
            raise PublishReturned(f"message {message_id} unroutable: {self._returned[0]}")

    def _publish_error(self, exc: Exception, message_id: str) -> PublishError:
        """Classify a failed publish. kombu wraps py-amqp errors, so look down the chain."""
        chain: list[BaseException] = []
        cause: BaseException | None = exc
        while cause is not None and len(chain) < 10:
            chain.append(cause)
            cause = cause.__cause__ or cause.__context__
        if any(isinstance(error, MessageNacked) for error in chain):
            return PublishNacked(f"broker nacked message {message_id} (queue full or unable to store it)")
        self.close()
        if any(isinstance(error, TimeoutError) for error in chain):
            return PublishTimeout(
                f"no confirm for message {message_id} within {settings.RELIABILITY_CONFIRM_TIMEOUT_S}s"
            )
        self._circuit_open_until = time.monotonic() + _CIRCUIT_OPEN_S
        return BrokerUnavailable(f"publish of message {message_id} failed: {exc!r}")


_publisher = ConfirmedPublisher()


def publisher() -> ConfirmedPublisher:
    """Return this process's publisher."""
    return _publisher
