"""Design for failure, end to end: gaps, lost tails, a killed relay, a restarted broker."""

import os
import tempfile
import threading

import redis
from celery import current_app
from django.conf import settings
from django.test import override_settings, tag
from django.utils import timezone
from kombu import Connection

from harness.polling import poll_until
from harness.rabbitmq import queue_message_counts, rabbitmqctl
from reliability.models import MessageLog, OutboxMessage, StreamGap
from trades.models import Trade
from trades.services import trade_place

from ..pipeline import PipelineTestCase


def queue_take(name: str, count: int) -> int:
    """Remove ``count`` messages from the head of a queue (basic.get + ack): they are lost."""
    taken = 0
    with Connection(current_app.conf.broker_url) as conn:
        channel = conn.channel()
        for _ in range(count):
            message = channel.basic_get(name, no_ack=False)
            if message is None:
                break
            channel.basic_ack(message.delivery_tag)
            taken += 1
    return taken


@tag("integration")
class ReconcilerIntegrationTests(PipelineTestCase):
    def test_a_message_removed_from_the_queue_is_detected_and_republished(self) -> None:
        (account,) = self.create_accounts(1, balance=10_000)
        for _ in range(20):
            trade_place(account_id=account, beans=10)
        self.assertEqual(queue_take("beans", 1), 1, "seq 1 of the stream never reaches the consumer")
        self.start_worker()
        self.start_beat()
        self.wait_drained(timeout=120)
        self.assert_exactly_once(trades=20)
        self.assert_streams_contiguous()
        gap = StreamGap.objects.using(settings.BEANS_DATABASE).get(seq=1)
        self.assertEqual(gap.status, StreamGap.Status.HEALED)
        self.assertGreaterEqual(gap.republish_attempts, 1, "the reconciler, not luck, brought it back")

    def test_a_lost_tail_is_detected_through_the_high_water_mark(self) -> None:
        (account,) = self.create_accounts(1, balance=10_000)
        worker = self.start_worker()
        for _ in range(7):
            trade_place(account_id=account, beans=10)
        self.wait_drained(timeout=60)
        worker.stop()
        for _ in range(3):
            trade_place(account_id=account, beans=10)
        self.assertEqual(queue_take("beans", 10), 3, "the last three deductions are lost in the broker")
        self.start_worker(name="w2")
        self.start_beat()
        self.wait_drained(timeout=120)
        self.assert_exactly_once(trades=10)
        self.assert_streams_contiguous()
        tail = StreamGap.objects.using(settings.BEANS_DATABASE).filter(
            seq__in=[8, 9, 10], status=StreamGap.Status.HEALED
        )
        self.assertEqual(tail.count(), 3)

    @override_settings(RELIABILITY_RELAY_FAST_PATH=False)
    def test_relay_killed_before_and_after_publish_heals_with_one_effect(self) -> None:
        accounts = self.create_accounts(4, balance=10_000)
        for n in range(40):  # committed, never published: the producer died after commit
            trade_place(account_id=accounts[n % 4], beans=10)
        self.assertEqual(OutboxMessage.objects.filter(status=OutboxMessage.Status.PENDING).count(), 40)
        OutboxMessage.objects.update(next_attempt_at=timezone.now())  # due for the sweep now
        faults = {
            "RELIABILITY_FAULT_INJECTION": "1",
            "RELIABILITY_FAULTS": "relay.before_publish=kill:1,relay.after_publish=kill:1",
            "RELIABILITY_FAULT_DIR": tempfile.mkdtemp(prefix="faults-"),
        }
        self.assertEqual(self.run_manage("relay_outbox", env=faults), -9, "killed between commit and publish")
        self.assertEqual(queue_message_counts()["beans"], 0)
        # The dead relay's claim keeps the rows from every other relay until it expires.
        claimed = OutboxMessage.objects.exclude(claimed_by="").filter(claim_expires_at__gt=timezone.now())
        self.assertEqual(claimed.count(), 40, "the killed relay had claimed the rows (committed)")
        self.assertEqual(self.run_manage("relay_outbox", env=faults), 0, "nothing to take while claimed")
        self.assertEqual(queue_message_counts()["beans"], 0)
        OutboxMessage.objects.update(claim_expires_at=timezone.now())  # the claim runs out
        self.assertEqual(
            self.run_manage("relay_outbox", env=faults), -9, "killed between publish and mark-sent"
        )
        self.assertEqual(queue_message_counts()["beans"], 1, "the first message was published")
        self.assertEqual(OutboxMessage.objects.filter(status=OutboxMessage.Status.PENDING).count(), 40)
        OutboxMessage.objects.update(claim_expires_at=timezone.now())
        self.assertEqual(self.run_manage("relay_outbox", env=faults), 0)
        self.start_worker()
        self.wait_drained(timeout=120)
        self.assert_exactly_once(trades=40)
        self.assert_streams_contiguous()
        redelivered = MessageLog.objects.using(settings.BEANS_DATABASE).filter(
            handler="beans.deduct", redeliveries__gte=1
        )
        self.assertEqual(redelivered.count(), 1, "the message published twice was applied once")

    @tag("broker_restart")
    def test_broker_restarted_mid_stream_loses_and_doubles_nothing(self) -> None:
        accounts = self.create_accounts(5, balance=100_000)
        self.start_worker()
        self.start_beat()
        placed = 0

        def place(count: int) -> None:
            nonlocal placed
            for _ in range(count):
                trade_place(account_id=accounts[placed % 5], beans=10)
                placed += 1

        place(100)
        rabbitmqctl("stop_app")
        self.addCleanup(rabbitmqctl, "start_app")
        place(50)  # the broker is down: these stay in the outbox
        restart = threading.Thread(target=rabbitmqctl, args=("start_app",))
        restart.start()
        place(50)  # while it comes back
        restart.join(120)
        place(100)
        self.wait_drained(timeout=180)
        self.assert_exactly_once(trades=300)
        self.assert_streams_contiguous()
        self.assertEqual(Trade.objects.filter(status=Trade.Status.DEDUCTED).count(), 300)

    @override_settings(RELIABILITY_ID_GENERATOR="snowflake")
    def test_redis_flushed_mid_run_breaks_no_guarantee(self) -> None:
        # Snowflake ids lease their worker ids in Redis (the default, UUIDv7, needs no Redis).
        self.process_env = {**self.process_env, "RELIABILITY_ID_GENERATOR": "snowflake"}
        accounts = self.create_accounts(5, balance=100_000)
        self.start_worker()
        self.start_beat()
        for n in range(100):
            trade_place(account_id=accounts[n % 5], beans=10)
        client = redis.Redis.from_url(os.environ["RELIABILITY_REDIS_URL"])
        self.assertTrue(client.keys("*"), "worker ids are leased in Redis")
        client.flushdb()
        for n in range(100):
            trade_place(account_id=accounts[n % 5], beans=10)
        self.wait_drained(timeout=180)
        self.assert_exactly_once(trades=200)
        self.assert_streams_contiguous()
        # A live process takes its lease back at its next renewal (every third of the TTL), or
        # its next id; on a loaded machine a renewal may come late, so wait for it, bounded.
        poll_until(
            lambda: bool(client.keys("*")),
            timeout=15,
            what="the live processes to lease their worker ids again",
        )
