"""Raw AMQP round trip: the ceiling the broker allows, without Celery and without a database.

Persistent messages are published to a durable quorum queue with publisher
confirms waited for in batches (py-amqp directly), and consumed by ``consumers``
processes with manual acks, one ``basic.ack`` per message. The clock runs from
the first publish to the last ack.
"""

import json
import multiprocessing as mp
import signal
import time
import uuid
from dataclasses import dataclass
from multiprocessing.sharedctypes import Synchronized
from typing import Any

import amqp

from reliability.produce.topology import quorum_queue

QUEUE = "bench-raw"


@dataclass(frozen=True)
class Broker:
    host: str
    userid: str
    password: str
    virtual_host: str

    def connect(self) -> amqp.Connection:
        connection = amqp.Connection(
            host=self.host,
            userid=self.userid,
            password=self.password,
            virtual_host=self.virtual_host,
            connect_timeout=5,
        )
        connection.connect()
        return connection


def queue_declare(broker: Broker, *, dead_letter_exchange: str, delivery_limit: int) -> None:
    """Declare the raw queue with the same arguments as the pipeline's quorum queues."""
    queue = quorum_queue(QUEUE, dead_letter_exchange=dead_letter_exchange, delivery_limit=delivery_limit)
    connection = broker.connect()
    try:
        channel = connection.channel()
        # kombu sets queue_arguments from its attrs table; its type hints do not declare it.
        arguments = queue.queue_arguments  # type: ignore[attr-defined]
        channel.queue_declare(QUEUE, durable=True, auto_delete=False, arguments=arguments)
    finally:
        connection.close()


def _consume(
    broker: Broker,
    prefetch: int,
    count: "Synchronized[int]",
    last_ack: "Synchronized[float]",
    ready: Any,
    stop: Any,
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us through ``stop``
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    connection = broker.connect()
    channel = connection.channel()
    channel.basic_qos(0, prefetch, False)
    received = 0

    def on_message(message: amqp.Message) -> None:
        nonlocal received
        channel.basic_ack(message.delivery_tag)
        received += 1
        # Unsynchronized on purpose: each consumer owns its two values.
        count.value = received
        last_ack.value = time.time()

    channel.basic_consume(QUEUE, callback=on_message, no_ack=False)
    ready.set()
    while not stop.is_set():
        try:
            connection.drain_events(timeout=0.2)
        except TimeoutError:
            continue
    connection.close()


@dataclass
class RawResult:
    messages: int
    seconds: float
    publish_seconds: float

    @property
    def per_s(self) -> float:
        return self.messages / self.seconds


def round_trip(
    broker: Broker,
    *,
    messages: int,
    consumers: int,
    prefetch: int,
    batch: int = 100,
    timeout: float = 120.0,
) -> RawResult:
    """Publish ``messages`` with batched confirms and wait until the consumers acked them all."""
    ctx = mp.get_context("fork")
    stop = ctx.Event()
    workers = []
    counters = []
    for _ in range(consumers):
        count = ctx.Value("q", 0, lock=False)
        last_ack = ctx.Value("d", 0.0, lock=False)
        ready = ctx.Event()
        process = ctx.Process(
            target=_consume, args=(broker, prefetch, count, last_ack, ready, stop), daemon=True
        )
        process.start()
        workers.append(process)
        counters.append((count, last_ack, ready))
    try:
        for _, _, ready in counters:
            if not ready.wait(30):
                raise RuntimeError("raw AMQP consumer did not start within 30s")
        connection = broker.connect()
        try:
            channel = connection.channel()
            channel.confirm_select()
            outstanding: set[int] = set()
            nacked: list[int] = []

            def on_ack(tag: int, multiple: bool) -> None:
                if multiple:
                    outstanding.difference_update([t for t in outstanding if t <= tag])
                else:
                    outstanding.discard(tag)

            def on_nack(tag: int, multiple: bool) -> None:
                nacked.append(tag)
                on_ack(tag, multiple)

            channel.events["basic_ack"].add(on_ack)
            channel.events["basic_nack"].add(on_nack)
            envelope = {"v": 1, "message_id": "", "stream": "raw.0", "seq": 0, "payload": {"n": 0}}
            tag = 0
            started = time.time()
            deadline = time.monotonic() + timeout
            while tag < messages:
                for _ in range(min(batch, messages - tag)):
                    tag += 1
                    envelope["message_id"] = str(uuid.uuid4())
                    envelope["seq"] = tag
                    body = json.dumps(envelope)
                    channel.basic_publish(
                        amqp.Message(body, content_type="application/json", delivery_mode=2),
                        exchange="",
                        routing_key=QUEUE,
                    )
                    outstanding.add(tag)
                while outstanding:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"raw AMQP: no confirms for {len(outstanding)} messages")
                    try:
                        connection.drain_events(timeout=1)
                    except TimeoutError:
                        continue
            published = time.time()
            if nacked:
                raise RuntimeError(f"raw AMQP: broker nacked {len(nacked)} messages")
        finally:
            connection.close()
        while sum(count.value for count, _, _ in counters) < messages:
            if time.monotonic() > deadline:
                got = sum(count.value for count, _, _ in counters)
                raise RuntimeError(f"raw AMQP: only {got}/{messages} messages acked within {timeout}s")
            time.sleep(0.01)
        finished = max(last_ack.value for _, last_ack, _ in counters)
        return RawResult(messages=messages, seconds=finished - started, publish_seconds=published - started)
    finally:
        stop.set()
        for process in workers:
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join(5)
