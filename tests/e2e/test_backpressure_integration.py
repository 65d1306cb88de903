"""Back-pressure without loss: a bounded queue refuses, the outbox holds, everything drains once."""

import os
import sys
import time

from django.db.models import Max
from django.test import override_settings, tag

from harness.broker_admin import broker_admin
from harness.rabbitmq import broker_vhost, queue_message_counts
from reliability.models import OutboxMessage
from reliability.ops import degrade
from trades.models import Trade
from trades.services import trade_place

from ..pipeline import PipelineTestCase
from .test_relay_integration import queue_policy

# CI places 1,000; `BACKPRESSURE_TRADES=10000 make test TEST_ARGS=tests.e2e.test_backpressure_integration`
# runs the full size.
TRADES = int(os.environ.get("BACKPRESSURE_TRADES", "1000"))
QUEUE_BOUND = 200


@tag("integration")
class BackPressureIntegrationTests(PipelineTestCase):
    process_env = {
        **PipelineTestCase.process_env,
        "RELIABILITY_RELAY_BACKOFF_MAX_S": "3",
        "RELIABILITY_DEGRADE_OUTBOX_AGE_S": "5",
        "RELIABILITY_DEGRADE_INTERVAL_S": "1",
    }

    @override_settings(RELIABILITY_DEGRADE_OUTBOX_AGE_S=5, RELIABILITY_RELAY_BACKOFF_MAX_S=3)
    def test_bounded_queue_refuses_the_outbox_holds_and_everything_drains_once(self) -> None:
        broker_admin().policy_set(broker_vhost(), "bound", "^beans$", {"max-length": QUEUE_BOUND})
        self.addCleanup(broker_admin().policy_clear, broker_vhost(), "bound")
        self.wait_for(lambda: queue_policy("beans") == "bound", timeout=30, what="the bound to apply")
        accounts = self.create_accounts(20, balance=10 * TRADES)

        started = time.monotonic()
        for n in range(TRADES):  # consumers stopped
            trade_place(account_id=accounts[n % 20], beans=10)
        self.assertEqual(Trade.objects.count(), TRADES, "every trade was accepted")
        in_queue = queue_message_counts()["beans"]
        backlog = OutboxMessage.objects.filter(status=OutboxMessage.Status.PENDING).count()
        self.assertLessEqual(in_queue, QUEUE_BOUND + 1, "the broker refused what did not fit")
        self.assertEqual(in_queue + backlog, TRADES, "what the queue refused, the outbox holds")
        refused = OutboxMessage.objects.filter(last_error__startswith="PublishNacked").count()
        self.assertGreater(refused, 0)
        time.sleep(5)
        degrade._cache.clear()
        self.assertTrue(degrade.pipeline_mode_evaluate().degraded, "the backlog turns degrade mode on")

        drain_started = time.monotonic()
        self.start_worker()
        self.start_beat()
        self.wait_drained(timeout=600)
        drained_s = time.monotonic() - drain_started
        self.assert_exactly_once(trades=TRADES)
        self.assert_streams_contiguous()
        self.assert_per_account_order()
        self.assertEqual(Trade.objects.filter(status=Trade.Status.DEDUCTED).count(), TRADES)
        degrade._cache.clear()
        self.assertFalse(degrade.pipeline_mode_evaluate().degraded, "drained: degrade mode is off")
        attempts = OutboxMessage.objects.aggregate(most=Max("attempts"))["most"]
        sys.stderr.write(
            f"\nback-pressure: {TRADES} trades, queue bound {QUEUE_BOUND}, peak outbox backlog {backlog}, "
            f"placed in {drain_started - started:.1f}s, drained in {drained_s:.1f}s, "
            f"most publish attempts for one message {attempts}, lost 0, doubled 0, order violations 0\n"
        )
