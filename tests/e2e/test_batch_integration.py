"""The batched paths end to end: the relay loop's envelopes and the one-transaction consumer.

With a worker running, its relay loop publishes (the producers' inline fast path
stands aside), packing many deductions per envelope; the consumer applies an
envelope in one transaction. Faults strike in the middle of a batch: a worker
child killed inside the batch transaction and after its commit, and the relay
loop killed between the confirms of a window and marking its rows sent.
"""

import os
import signal
import subprocess
import sys
import tempfile
from collections import Counter

from django.conf import settings
from django.db import transaction
from django.db.models import Count
from django.test import override_settings, tag

from harness.broker_admin import broker_admin
from harness.environment import subprocess_env
from harness.polling import poll_until
from harness.processes import REPO
from harness.rabbitmq import broker_vhost, queue_message_counts
from reliability.models import MessageLog, OutboxMessage
from reliability.produce.outbox import outbox_enqueue
from reliability.produce.relay import outbox_relay_messages, relay_loop_running
from trades.services import trade_place

from ..pipeline import PipelineTestCase
from . import test_relay_integration as relay_tests  # the module, so its tests are not collected twice
from .test_relay_integration import queue_policy


def largest_batch(handler: str) -> int:
    """The most message-log rows one consumer statement inserted (they share ``applied_at``)."""
    rows = MessageLog.objects.using(settings.BEANS_DATABASE if handler == "beans.deduct" else "default")
    sizes = (
        rows.filter(handler=handler).values("applied_at").annotate(n=Count("id")).values_list("n", flat=True)
    )
    return max(sizes, default=0)


@tag("integration")
class BatchedPipelineIntegrationTests(PipelineTestCase):
    def place(self, accounts: list[int], count: int) -> None:
        for n in range(count):
            trade_place(account_id=accounts[n % len(accounts)], beans=10)

    def wait_relay_loop(self) -> None:
        poll_until(lambda: relay_loop_running(), timeout=60, what="the worker's relay loop to take the lead")

    def test_relay_loop_batches_and_every_trade_is_deducted_once_in_order(self) -> None:
        accounts = self.create_accounts(20, balance=100_000)
        self.start_worker()
        self.start_beat()
        self.wait_relay_loop()
        self.place(accounts, 400)
        self.wait_drained(timeout=180)
        self.assert_exactly_once(trades=400)
        self.assert_streams_contiguous()
        self.assert_per_account_order()
        self.assertGreater(largest_batch("beans.deduct"), 1, "deductions were applied in batches")
        self.assertGreater(largest_batch("trades.record_outcome"), 1, "outcomes were applied in batches")

    def test_worker_child_killed_inside_and_after_a_batch_transaction_deducts_once(self) -> None:
        accounts = self.create_accounts(10, balance=100_000)
        fault_dir = tempfile.mkdtemp(prefix="faults-")
        worker = self.start_worker(
            env={
                "RELIABILITY_FAULT_INJECTION": "1",
                "RELIABILITY_FAULTS": "consume.before_handler=kill:2,consume.after_commit=kill:2",
                "RELIABILITY_FAULT_DIR": fault_dir,
            }
        )
        self.start_beat()
        self.wait_relay_loop()
        self.place(accounts, 300)
        self.wait_drained(timeout=240)
        self.assertEqual(len(os.listdir(fault_dir)), 4, "each fault point fired twice")
        worker.stop()  # hands back what a killed child left unacked
        self.start_worker(name="w2")
        self.wait_queues_empty()
        self.assert_exactly_once(trades=300)
        self.assert_streams_contiguous()
        self.assert_per_account_order()
        redelivered = MessageLog.objects.using(settings.BEANS_DATABASE).filter(redeliveries__gte=1)
        self.assertGreater(
            redelivered.count(), 0, "a batch committed before a kill came back, and was dropped"
        )

    def test_relay_loop_killed_between_confirms_and_marking_sent_heals_with_one_effect(self) -> None:
        accounts = self.create_accounts(10, balance=100_000)
        fault_dir = tempfile.mkdtemp(prefix="faults-")
        self.start_worker(
            name="doomed",
            env={
                "RELIABILITY_FAULT_INJECTION": "1",
                # Every window of the pass confirmed, none of its rows marked sent yet.
                "RELIABILITY_FAULTS": "relay.before_mark_sent=kill:1",
                "RELIABILITY_FAULT_DIR": fault_dir,
            },
        )
        self.wait_relay_loop()
        self.place(accounts, 200)
        poll_until(lambda: len(os.listdir(fault_dir)) == 1, timeout=120, what="the relay loop's kill")
        self.start_worker(name="w2")
        self.start_beat()
        self.wait_drained(timeout=240)
        self.assert_exactly_once(trades=200)
        self.assert_streams_contiguous()
        self.assert_per_account_order()
        redelivered = MessageLog.objects.using(settings.BEANS_DATABASE).filter(
            handler="beans.deduct", redeliveries__gte=1
        )
        self.assertGreater(redelivered.count(), 0, "published before the kill, published again, applied once")


@tag("integration")
class PipelinedRelayIntegrationTests(PipelineTestCase):
    @override_settings(RELIABILITY_RELAY_FAST_PATH=False)
    def test_a_relay_pass_packs_envelopes_and_marks_rows_sent_in_one_statement(self) -> None:
        accounts = self.create_accounts(5, balance=100_000)
        for n in range(60):
            trade_place(account_id=accounts[n % 5], beans=10)
        self.assertEqual(outbox_relay_messages(ids=None, due_only=False), 60)
        in_queue = queue_message_counts()["beans"]
        self.assertLess(in_queue, 60, "many deductions per task message")
        self.assertGreaterEqual(in_queue, 1)
        sent_at = Counter(OutboxMessage.objects.values_list("sent_at", flat=True))
        self.assertEqual(sum(sent_at.values()), 60)
        self.assertGreater(max(sent_at.values()), 1, "marked sent together")
        self.start_worker()
        self.start_beat()
        self.wait_drained(timeout=120)
        self.assert_exactly_once(trades=60)
        self.assert_streams_contiguous()

    @override_settings(RELIABILITY_RELAY_FAST_PATH=False)
    def test_the_relay_loop_command_publishes_at_commit_and_stops_on_interrupt(self) -> None:
        relay = subprocess.Popen(
            [sys.executable, "manage.py", "relay_outbox", "--loop"],
            cwd=REPO,
            env=subprocess_env(self.process_env),
            stdout=subprocess.PIPE,
            text=True,
        )
        self.addCleanup(relay.kill)
        poll_until(relay_loop_running, timeout=60, what="the relay loop to take the lead")
        (account,) = self.create_accounts(1, balance=100_000)
        for _ in range(30):
            trade_place(account_id=account, beans=10)
        pending = OutboxMessage.objects.filter(status=OutboxMessage.Status.PENDING)
        poll_until(lambda: not pending.exists(), timeout=30, what="the loop to publish every row")
        self.assertLess(queue_message_counts()["beans"], 30, "packed into envelopes")
        relay.send_signal(signal.SIGINT)
        output, _ = relay.communicate(timeout=30)
        self.assertEqual(relay.returncode, 0)
        self.assertIn("stopped after 30 messages", output)

    @override_settings(
        RELIABILITY_RELAY_FAST_PATH=False, RELIABILITY_ENVELOPE_MAX_MESSAGES=5, RELIABILITY_RELAY_WINDOW=4
    )
    def test_a_nacked_envelope_fails_only_its_own_rows(self) -> None:
        (account,) = self.create_accounts(1, balance=100_000)
        # A quorum queue checks its bound as messages arrive: with a window in flight it can
        # overshoot by a few, then refuses (basic.nack) what does not fit.
        broker_admin().policy_set(broker_vhost(), "full", "^beans$", {"max-length": 2})
        self.addCleanup(broker_admin().policy_clear, broker_vhost(), "full")
        poll_until(lambda: queue_policy("beans") == "full", timeout=30, what="the policy to apply")
        for _ in range(200):
            trade_place(account_id=account, beans=10)
        sent = outbox_relay_messages(ids=None, due_only=False)
        rows = OutboxMessage.objects.filter(task_name="beans.deduct")
        self.assertEqual(rows.filter(status=OutboxMessage.Status.SENT).count(), sent)
        self.assertGreater(sent, 0)
        refused = rows.filter(status=OutboxMessage.Status.PENDING, last_error__startswith="PublishNacked")
        self.assertGreater(refused.count(), 0, "the nacked envelopes' rows carry the reason")
        self.assertEqual(set(refused.values_list("attempts", flat=True)), {1})
        self.assertEqual(refused.count() % 5, 0, "whole envelopes of 5 were refused, nothing else")
        untouched = rows.filter(status=OutboxMessage.Status.PENDING, attempts=0)
        self.assertFalse(untouched.exclude(last_error="").exists(), "rows after the refusal were not tried")
        self.assertEqual(sent + refused.count() + untouched.count(), 200)
        broker_admin().policy_clear(broker_vhost(), "full")
        self.start_worker()
        self.start_beat()
        self.wait_drained(timeout=180)
        self.assert_exactly_once(trades=200)
        self.assert_streams_contiguous()
        self.assert_per_account_order()

    @override_settings(RELIABILITY_RELAY_FAST_PATH=False)
    def test_a_returned_envelope_fails_only_its_own_rows(self) -> None:
        with transaction.atomic():  # outcomes first, then deductions: two envelopes, one window
            for n in range(10):
                outbox_enqueue(
                    task_name="trades.record_outcome", queue="trades", stream="o.1", payload={"n": n}
                )
            for n in range(10):
                outbox_enqueue(task_name="beans.deduct", queue="beans", stream="d.1", payload={"n": n})
        relay_tests.RelayIntegrationTests._unbind_beans(self)  # type: ignore[arg-type]
        self.addCleanup(relay_tests.RelayIntegrationTests._rebind_beans, self)  # type: ignore[arg-type]
        self.assertEqual(outbox_relay_messages(ids=None, due_only=False), 10)
        rows = OutboxMessage.objects.all()
        self.assertEqual(
            set(rows.filter(queue="trades").values_list("status", flat=True)), {OutboxMessage.Status.SENT}
        )
        returned = rows.filter(queue="beans")
        self.assertEqual(set(returned.values_list("status", "attempts")), {(OutboxMessage.Status.PENDING, 1)})
        self.assertTrue(
            all(
                error.startswith("PublishReturned") for error in returned.values_list("last_error", flat=True)
            )
        )
        self.assertEqual(queue_message_counts()["beans"], 0)
