"""Every wait has a deadline, and no database lock is held across a broker wait.

Against the real RabbitMQ and PostgreSQL; the silent partition comes from
``harness.proxies.SilentProxy``. A call that would block for as long as the
partition lasts runs in a thread whose join has a generous limit: the test fails
on a hang, and asserts nothing about speed. The database sessions' deadlines are the
project's settings (``tests/project/test_settings.py``).
"""

import socket
import struct
import threading
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from celery import current_app
from django.db import transaction
from django.test import TestCase, override_settings, tag
from django.utils import timezone

from harness.proxies import SilentProxy, url_via
from reliability.conf import settings
from reliability.exceptions import BrokerUnavailable, PublishTimeout
from reliability.models import OutboxMessage
from reliability.produce.outbox import outbox_enqueue
from reliability.produce.publisher import ConfirmedPublisher, broker_connection
from reliability.produce.relay import outbox_claim, outbox_relay_messages
from reliability.worker import BoundedHeart, DeadLetteringConsumer
from tests.pipeline import PipelineTestCase

HANG_LIMIT_S = 60.0


def returns_within(test: Any, call: Callable[[], Any], *, limit: float = HANG_LIMIT_S) -> Any:
    """Run ``call`` in a thread; fail ``test`` if it has not returned (or raised) after ``limit`` s."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit)
    test.assertFalse(thread.is_alive(), f"still waiting after {limit}s: a wait without a deadline")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


@tag("broker")
class BrokerConnectionDeadlineTests(TestCase):
    def test_the_projects_connections_negotiate_heartbeats_and_bound_socket_io(self) -> None:
        for made in (broker_connection, current_app.connection_for_write):
            with self.subTest(made.__name__), made() as conn:
                conn.ensure_connection(max_retries=1)
                self.assertEqual(conn.connection.heartbeat, settings.RELIABILITY_BROKER_HEARTBEAT_S)
                sock = conn.connection.transport.sock
                seconds, _ = struct.unpack("ll", sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16))
                self.assertEqual(seconds, int(settings.RELIABILITY_BROKER_IO_TIMEOUT_S))

    def test_the_worker_bounds_its_heartbeat_events_and_skips_delayed_delivery(self) -> None:
        steps = DeadLetteringConsumer.Blueprint().types
        self.assertIn(BoundedHeart, steps)
        self.assertNotIn("celery.worker.consumer.delayed_delivery:DelayedDelivery", steps)
        self.assertNotIn("celery.worker.consumer.heart:Heart", steps)
        with override_settings(RELIABILITY_NATIVE_DELAYED_DELIVERY=True):
            self.assertIn(
                "celery.worker.consumer.delayed_delivery:DelayedDelivery",
                DeadLetteringConsumer.Blueprint().types,
            )


@tag("integration")
class PublisherPartitionTests(PipelineTestCase):
    """The publisher across a silent partition: it gives up in time, and abandons the connection."""

    def setUp(self) -> None:
        super().setUp()
        broker = urlsplit(current_app.conf.broker_url)
        self.proxy = SilentProxy(
            broker.hostname or "127.0.0.1", broker.port or 5672, name="broker-proxy"
        ).start()
        self.addCleanup(self.proxy.close)
        self.publisher = ConfirmedPublisher(url=url_via(current_app.conf.broker_url, self.proxy.port))
        self.addCleanup(self.publisher.close, abandon=True)

    def publish(self) -> None:
        self.publisher.publish(
            task_name="beans.deduct", queue="beans", message_id=str(uuid.uuid4()), envelope={}
        )

    def test_a_publish_into_a_silent_partition_times_out_and_the_next_fails_fast(self) -> None:
        returns_within(self, self.publish)  # connected and confirmed through the proxy
        kept = self.publisher._connection
        assert kept is not None
        self.proxy.partition()
        with self.assertRaises(PublishTimeout):
            returns_within(self, self.publish)
        self.assertIsNone(self.publisher._connection, "the connection was abandoned, not kept")
        self.assertIsNone(kept._connection, "its socket was closed without the close handshake")
        # A new connection cannot complete its handshake: the connect timeout ends it.
        self.publisher._circuit_open_until = 0.0
        with self.assertRaises(BrokerUnavailable):
            returns_within(self, self.publish)
        self.proxy.heal()
        self.publisher._circuit_open_until = 0.0
        returns_within(self, self.publish)


class OutboxClaimTests(TestCase):
    def enqueue(self, count: int) -> list[int]:
        with transaction.atomic():
            return [
                outbox_enqueue(task_name="beans.deduct", queue="beans", stream="s", payload={"n": n}).pk
                for n in range(count)
            ]

    @override_settings(RELIABILITY_RELAY_FAST_PATH=False)
    def test_claimed_rows_are_left_to_their_relay_until_the_claim_expires(self) -> None:
        ids = self.enqueue(3)
        claimed = outbox_claim(ids=None, limit=10, due_only=False)
        self.assertEqual([row.pk for row in claimed], ids)
        rows = OutboxMessage.objects.filter(pk__in=ids)
        self.assertTrue(all(row.claimed_by and row.claim_expires_at for row in rows))
        self.assertEqual(outbox_claim(ids=None, limit=10, due_only=False), [], "claimed by another relay")
        # That relay went silent: once its claim expires, any relay (or the sweep) takes over.
        OutboxMessage.objects.update(claim_expires_at=timezone.now() - timedelta(seconds=1))
        self.assertEqual([row.pk for row in outbox_claim(ids=None, limit=10, due_only=False)], ids)

    @override_settings(RELIABILITY_RELAY_FAST_PATH=False, RELIABILITY_RELAY_CLAIM_S=1.0)
    def test_a_window_that_could_outlast_the_claim_is_not_started_and_its_rows_are_released(self) -> None:
        # A claim shorter than one publish window: nothing is published, and nothing stays claimed.
        ids = self.enqueue(2)
        self.assertEqual(outbox_relay_messages(ids=None, due_only=False), 0)
        rows = list(OutboxMessage.objects.filter(pk__in=ids))
        self.assertEqual(
            {(row.status, row.claimed_by, row.claim_expires_at) for row in rows}, {("pending", "", None)}
        )
