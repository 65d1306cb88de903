"""Confirmed, mandatory publishing of outbox messages to RabbitMQ.

A message counts as published only when the broker confirmed it (``basic.ack``)
and did not return it as unroutable (``basic.return``, because it is published
``mandatory``). Anything else is a ``PublishError`` and the caller leaves the
outbox row pending.

``publish_many`` pipelines: it puts every message of a window in flight, then
collects the confirms by delivery tag (the channel is in confirm mode; a
``basic.return`` arrives before the ack of the message it returns). A nack, a
return or a missing confirm fails only the message it concerns. One synchronous
confirm per publish caps near 1,000 messages/s here; a window of them costs about
one round trip.

Each process keeps one connection (re-opened after a fork, an error, or an idle
spell longer than the AMQP heartbeat). After a connection failure a short circuit
breaker makes further publishes fail at once instead of each waiting for a connect
timeout: the relay sweep retries later.

Every wait has a deadline (``broker_connection``): connect and handshake, each
blocking socket read and write, each confirm. A connection that missed one is
abandoned (its socket closed), never closed politely: over a silent partition a
``Close-Ok`` never comes.
"""

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from celery import current_app
from kombu import Connection, Producer

from reliability.conf import settings
from reliability.exceptions import (
    BrokerUnavailable,
    PublishError,
    PublishNacked,
    PublishReturned,
    PublishTimeout,
)
from reliability.produce.topology import dead_letter_queue, topology_declare

logger = logging.getLogger(__name__)

_CIRCUIT_OPEN_S = 1.0


def broker_connection(url: str | None = None) -> Connection:
    """A kombu connection to the broker with a deadline on every wait.

    ``connect_timeout`` bounds the TCP connect and the AMQP handshake; the socket's
    read and write timeouts (``SO_RCVTIMEO``/``SO_SNDTIMEO``) bound every blocking
    operation after it (a declare, a channel open or close, a ``basic.get``); AMQP
    heartbeats let the broker notice a client that went silent. Several
    ';'-separated URLs are cluster nodes, tried round robin.
    """
    io_timeout = settings.RELIABILITY_BROKER_IO_TIMEOUT_S
    return Connection(
        url or current_app.conf.broker_url,
        connect_timeout=settings.RELIABILITY_CONNECT_TIMEOUT_S,
        heartbeat=settings.RELIABILITY_BROKER_HEARTBEAT_S,
        failover_strategy="round-robin",
        transport_options={"read_timeout": io_timeout, "write_timeout": io_timeout},
    )


def connection_abandon(connection: Connection | None) -> None:
    """Drop a connection without the AMQP close handshake: close its socket, now."""
    if connection is None:
        return
    try:
        connection.collect()
    except Exception:
        logger.debug("error while abandoning a broker connection", exc_info=True)


@dataclass(frozen=True)
class Publish:
    """One task message to publish: ``task_id`` is the Celery task id (correlation id)."""

    task_name: str
    queue: str
    task_id: str
    envelope: Any


class ConfirmedPublisher:
    """Publish Celery task messages with confirms and ``mandatory`` on one connection."""

    def __init__(self, *, url: str | None = None) -> None:
        self._url = url  # None: the Celery app's broker_url
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._connection: Connection | None = None
        self._producer: Producer | None = None
        self._circuit_open_until = 0.0
        self._last_used = 0.0
        # Confirm bookkeeping of the current channel: the next delivery tag, the tags
        # confirmed (True: ack, False: nack), and the task ids the broker returned.
        self._next_tag = 1
        self._confirms: dict[int, bool] = {}
        self._returned: dict[str, str] = {}

    def _after_fork(self) -> None:
        """In a forked child: the parent's socket and lock state are not ours."""
        self._lock = threading.Lock()
        self._connection, self._producer, self._pid = None, None, os.getpid()

    def _on_return(self, exc: Exception, exchange: str, routing_key: str, message: Any) -> None:
        task_id = str(getattr(message, "properties", {}).get("correlation_id", ""))
        self._returned[task_id] = f"{exc} (exchange={exchange!r}, routing_key={routing_key!r})"

    def _on_confirm(self, positive: bool, delivery_tag: int, multiple: bool) -> None:
        if multiple:
            for tag in range(delivery_tag, 0, -1):
                if tag in self._confirms:
                    break
                self._confirms[tag] = positive
        else:
            self._confirms[delivery_tag] = positive

    def _connect(self) -> Producer:
        if self._pid != os.getpid():  # forked: the parent's socket is not ours
            self._connection, self._producer, self._pid = None, None, os.getpid()
        if self._producer is not None:
            if time.monotonic() - self._last_used < settings.RELIABILITY_BROKER_HEARTBEAT_S:
                return self._producer
            # Idle past a heartbeat: nobody answered the broker's heartbeats meanwhile, so it
            # may have closed the connection, or the path to it may be gone. A new one is cheap.
            self.close(abandon=True)
        if time.monotonic() < self._circuit_open_until:
            raise BrokerUnavailable("broker unreachable a moment ago; leaving it to the relay")
        app = current_app
        # Confirm mode is selected by hand below (not ``confirm_publish``, which waits
        # for each confirm in turn) so that many publishes can be in flight.
        url = self._url or app.conf.broker_url
        connection = broker_connection(url)
        try:
            connection.ensure_connection(
                max_retries=len(url.split(";")),
                interval_start=0,
                interval_step=0,
                timeout=settings.RELIABILITY_CONNECT_TIMEOUT_S,
            )
            if settings.RELIABILITY_DECLARE_TOPOLOGY:
                topology_declare(connection, app.conf.task_queues, self._dead_letter_queues())
            channel = connection.channel()
            channel.confirm_select()
            channel.events["basic_ack"].add(lambda tag, multiple: self._on_confirm(True, tag, multiple))
            channel.events["basic_nack"].add(lambda tag, multiple: self._on_confirm(False, tag, multiple))
            producer = Producer(channel, on_return=self._on_return, auto_declare=False)
        except Exception as exc:
            connection_abandon(connection)
            self._circuit_open_until = time.monotonic() + _CIRCUIT_OPEN_S
            raise BrokerUnavailable(f"cannot connect to the broker: {exc!r}") from exc
        self._connection, self._producer = connection, producer
        self._next_tag, self._confirms, self._returned = 1, {}, {}
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

    def close(self, *, abandon: bool = False) -> None:
        """Close the connection: politely (still within the socket timeouts), or ``abandon`` it."""
        if self._connection is not None:
            if abandon:
                connection_abandon(self._connection)
            else:
                try:
                    self._connection.release()
                except Exception:
                    logger.debug("error while closing the publisher connection", exc_info=True)
                    connection_abandon(self._connection)
        self._connection, self._producer = None, None

    def publish(self, *, task_name: str, queue: str, message_id: str, envelope: dict[str, Any]) -> None:
        """Publish one task message and return only once the broker confirmed it."""
        (error,) = self.publish_many([Publish(task_name, queue, message_id, envelope)])
        if error is not None:
            raise error

    def publish_many(self, items: list[Publish]) -> list[PublishError | None]:
        """Publish ``items`` pipelined; return, per item, None (confirmed) or why it was not.

        A connection that fails before anything of the window reached the broker is
        tried once more on a fresh connection (a kept connection may have died while
        idle). If a failed attempt did reach the broker, the consumer drops the copy.
        """
        with self._lock:
            if self._pid != os.getpid():
                self._after_fork()
            reused = self._producer is not None
            try:
                return self._publish_window(items)
            except BrokerUnavailable:
                if not reused:
                    raise
                self._circuit_open_until = 0.0
                return self._publish_window(items)

    def _publish_window(self, items: list[Publish]) -> list[PublishError | None]:
        producer = self._connect()
        tags: list[int] = []
        for item in items:
            try:
                current_app.send_task(
                    item.task_name,
                    args=[item.envelope],
                    task_id=item.task_id,
                    queue=item.queue,
                    producer=producer,
                    mandatory=True,
                    retry=False,
                    declare=[],
                    delivery_mode=2,
                )
            except Exception as exc:
                self.close(abandon=True)
                self._circuit_open_until = time.monotonic() + _CIRCUIT_OPEN_S
                if not tags:
                    raise BrokerUnavailable(f"publish of message {item.task_id} failed: {exc!r}") from exc
                # Part of the window is in flight on a dead connection: its fate is unknown.
                return [BrokerUnavailable(f"publish of message {i.task_id} failed: {exc!r}") for i in items]
            tags.append(self._next_tag)
            self._next_tag += 1
        self._confirms_wait(tags)
        results: list[PublishError | None] = []
        for item, tag in zip(items, tags, strict=True):
            confirmed = self._confirms.pop(tag, None)
            returned = self._returned.pop(item.task_id, None)
            if returned is not None:
                results.append(PublishReturned(f"message {item.task_id} unroutable: {returned}"))
            elif confirmed is None:
                results.append(
                    PublishTimeout(
                        f"no confirm for message {item.task_id} within "
                        f"{settings.RELIABILITY_CONFIRM_TIMEOUT_S}s"
                    )
                )
            elif not confirmed:
                results.append(
                    PublishNacked(f"broker nacked message {item.task_id} (queue full or unable to store it)")
                )
            else:
                results.append(None)
        if any(isinstance(result, PublishTimeout) for result in results):
            # Late confirms on this channel could be mistaken for new ones; and a broker that
            # did not confirm in time may be out of reach: no Close-Ok would come either.
            self.close(abandon=True)
        else:
            self._last_used = time.monotonic()
        return results

    def _confirms_wait(self, tags: list[int]) -> None:
        """Read from the connection until every tag is confirmed, or the confirm timeout."""
        assert self._connection is not None
        deadline = time.monotonic() + settings.RELIABILITY_CONFIRM_TIMEOUT_S
        while not all(tag in self._confirms for tag in tags):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                self._connection.drain_events(timeout=remaining)
            except TimeoutError:
                return
            except Exception as exc:
                self.close(abandon=True)
                self._circuit_open_until = time.monotonic() + _CIRCUIT_OPEN_S
                if not any(tag in self._confirms for tag in tags):
                    raise BrokerUnavailable(f"connection lost while waiting for confirms: {exc!r}") from exc
                return


_publisher = ConfirmedPublisher()


os.register_at_fork(after_in_child=_publisher._after_fork)


def publisher() -> ConfirmedPublisher:
    """Return this process's publisher."""
    return _publisher


def broker_topology_declare() -> list[str]:
    """Declare every exchange, quorum queue and the dead-letter queue; return the queue names."""
    return publisher().topology_declare()
