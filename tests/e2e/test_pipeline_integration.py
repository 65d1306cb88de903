"""End-to-end guarantees with a real RabbitMQ, PostgreSQL and Celery worker/beat processes."""

import os
import signal
import tempfile

from celery import current_app
from django.test import tag

from beans.models import LedgerEntry
from harness.polling import poll_until
from harness.rabbitmq import broker_vhost, rabbitmqctl
from reliability.envelope import outbox_envelope
from reliability.models import MessageLog, OutboxMessage
from trades.models import Trade
from trades.services import TradeOrder, trade_place, trades_place_many

from ..pipeline import PipelineTestCase


@tag("integration")
class PipelineIntegrationTests(PipelineTestCase):
    def test_500_trades_over_20_accounts_are_each_deducted_exactly_once(self) -> None:
        accounts = self.create_accounts(20, balance=2500)
        self.start_worker()
        self.start_beat()
        for n in range(500):
            trade_place(account_id=accounts[n % 20], beans=100)
        self.wait_drained(timeout=180)
        self.assert_exactly_once(trades=500)
        self.assertEqual(Trade.objects.filter(status=Trade.Status.DEDUCTED).count(), 500)

    def test_trades_placed_in_batches_are_each_deducted_exactly_once_in_order(self) -> None:
        accounts = self.create_accounts(20, balance=1000)
        self.start_worker()
        self.start_beat()
        for batch in range(8):  # 8 x 50 trades, 20 per account, each of 70 beans
            trades_place_many(
                orders=[TradeOrder(account_id=accounts[(batch * 50 + n) % 20], beans=70) for n in range(50)]
            )
        self.wait_drained(timeout=180)
        self.assert_exactly_once(trades=400)
        self.assert_per_account_order()
        # Each account affords its first 14 trades (980 beans), in the order they were placed.
        for account in accounts:
            statuses = list(
                Trade.objects.filter(account_id=account).order_by("pk").values_list("status", flat=True)
            )
            self.assertEqual(statuses, [Trade.Status.DEDUCTED] * 14 + [Trade.Status.REJECTED] * 6)

    def test_insufficient_funds_rejects_without_effect(self) -> None:
        (account,) = self.create_accounts(1, balance=1000)
        self.start_worker()
        for _ in range(10):
            trade_place(account_id=account, beans=300)
        self.wait_drained()
        self.assert_exactly_once(trades=10)
        self.assertEqual(Trade.objects.filter(status=Trade.Status.DEDUCTED).count(), 3)
        self.assertEqual(Trade.objects.filter(status=Trade.Status.REJECTED).count(), 7)

    def test_same_message_published_three_times_has_one_effect(self) -> None:
        (account,) = self.create_accounts(1, balance=1000)
        trade, _ = trade_place(account_id=account, beans=100)  # published once by the fast path
        message = OutboxMessage.objects.get(message_id=trade.deduction_message_id)
        self.assertEqual(message.status, OutboxMessage.Status.SENT)
        for _ in range(2):  # straight to the queue, bypassing the outbox
            current_app.send_task(
                message.task_name,
                args=[outbox_envelope(message)],
                task_id=str(message.message_id),
                queue="beans",
            )
        self.start_worker()
        self.wait_drained()
        poll_until(
            lambda: MessageLog.objects.get(handler="beans.deduct").redeliveries == 2,
            timeout=30,
            what="both copies to be recognised as duplicates",
        )
        self.assertEqual(LedgerEntry.objects.filter(message_id=trade.deduction_message_id).count(), 1)
        self.assert_exactly_once(trades=1)

    def test_worker_killed_with_sigkill_mid_stream_then_restarted(self) -> None:
        accounts = self.create_accounts(10, balance=10_000)
        worker = self.start_worker(name="doomed")
        for n in range(150):
            trade_place(account_id=accounts[n % 10], beans=50)
        poll_until(
            lambda: LedgerEntry.objects.filter(kind=LedgerEntry.Kind.DEDUCTION).count() >= 20,
            timeout=60,
            what="the worker to be mid-stream",
        )
        worker.kill(signal.SIGKILL)
        for n in range(150):
            trade_place(account_id=accounts[n % 10], beans=50)
        self.start_worker(name="survivor")
        self.start_beat()
        self.wait_drained(timeout=180)
        self.assert_exactly_once(trades=300)

    def test_worker_child_killed_after_commit_before_ack_deducts_once(self) -> None:
        accounts = self.create_accounts(5, balance=10_000)
        fault_dir = tempfile.mkdtemp(prefix="faults-")
        worker = self.start_worker(
            env={
                "RELIABILITY_FAULT_INJECTION": "1",
                "RELIABILITY_FAULTS": "consume.after_commit=kill:3",
                "RELIABILITY_FAULT_DIR": fault_dir,
            }
        )
        self.start_beat()
        for n in range(100):
            trade_place(account_id=accounts[n % 5], beans=10)
        self.wait_drained(timeout=180)
        self.assertEqual(len(os.listdir(fault_dir)), 3, "the fault point fired three times")
        # A message whose child died may stay unacked on the worker's channel until the
        # worker goes; a warm restart hands it back to the broker for redelivery.
        worker.stop()
        self.start_worker(name="w2")
        poll_until(
            lambda: sum(MessageLog.objects.values_list("redeliveries", flat=True)) >= 3,
            timeout=60,
            what="each message applied before a kill to come back once as a duplicate",
        )
        self.wait_queues_empty()
        self.assert_exactly_once(trades=100)

    @tag("broker_restart")
    def test_broker_down_when_trade_placed_then_relayed_once_back(self) -> None:
        (account,) = self.create_accounts(1, balance=1000)
        rabbitmqctl("stop_app")
        self.addCleanup(rabbitmqctl, "start_app")
        trade, _ = trade_place(account_id=account, beans=100)
        message = OutboxMessage.objects.get(message_id=trade.deduction_message_id)
        self.assertEqual(message.status, OutboxMessage.Status.PENDING)
        self.assertGreaterEqual(message.attempts, 1)
        self.assertIn("BrokerUnavailable", message.last_error)
        rabbitmqctl("start_app")
        rabbitmqctl("await_startup")
        self.start_worker()
        self.start_beat()
        self.wait_drained(timeout=120)
        self.assert_exactly_once(trades=1)
        self.assertIsNotNone(broker_vhost())
