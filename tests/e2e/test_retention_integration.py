"""Retention end to end: a real worker and beat drop partitions under load, cycle after cycle,
and the invariant checker (``manage.py verify``) still finds nothing wrong."""

import time

from django.conf import settings
from django.db import connection
from django.test import override_settings, tag

from project.invariants import pipeline_verify
from reliability.conf import settings as reliability_settings
from reliability.models import MessageLog, OutboxMessage
from reliability.ops.partitions import (
    partitions_default_table,
    partitions_drop,
    partitions_ensure,
    partitions_list,
)
from reliability.ops.retention import PARTITIONED
from trades.models import Trade
from trades.services import trade_place

from ..pipeline import PipelineTestCase

# Windows short enough that retention runs many times in a minute, and that the system checks
# still accept: every dedupe window above every redelivery horizon (max message age 20 s, the
# reconciler's 1 s x 6 attempts, replays 25 s), slices of 5 s made 20 s ahead, retention every 2 s.
RETENTION = {
    "RELIABILITY_DEDUPE_WINDOW_S": "30",
    "RELIABILITY_OUTBOX_RETENTION_S": "30",
    "RELIABILITY_MAX_MESSAGE_AGE_S": "20",
    "RELIABILITY_DEAD_LETTER_REPLAY_WINDOW_S": "25",
    "RELIABILITY_PARTITION_WIDTH_S": "5",
    "RELIABILITY_PARTITIONS_AHEAD": "4",
    "RELIABILITY_RETENTION_INTERVAL_S": "2",
}
IN_PROCESS = {
    name: float(value) for name, value in RETENTION.items() if name != "RELIABILITY_PARTITIONS_AHEAD"
}
IN_PROCESS["RELIABILITY_PARTITIONS_AHEAD"] = 4
WAVES, PER_WAVE, WAVE_PAUSE_S = 12, 8, 5.0


def slices_remake(*, width_s: float, ahead: int) -> None:
    """Replace the time slices of the reliability tables (empty here) by slices of ``width_s``."""
    now_ms = int(time.time() * 1000)
    for alias in reliability_settings.RELIABILITY_DATABASES:
        for model in PARTITIONED:
            table = model._meta.db_table
            partitions_drop(table=table, partitions=partitions_list(table=table, using=alias), using=alias)
            partitions_ensure(table=table, now_ms=now_ms, width_s=width_s, ahead=ahead, using=alias)


@tag("integration")
class RetentionIntegrationTests(PipelineTestCase):
    process_env = {**PipelineTestCase.process_env, **RETENTION}

    def setUp(self) -> None:
        super().setUp()
        slices_remake(width_s=5, ahead=4)
        # Later tests get the slices of the default settings back.
        self.addCleanup(
            slices_remake,
            width_s=reliability_settings.RELIABILITY_PARTITION_WIDTH_S,
            ahead=reliability_settings.RELIABILITY_PARTITIONS_AHEAD,
        )

    def test_pipeline_through_several_retention_cycles_verifies_ok(self) -> None:
        accounts = self.create_accounts(4, balance=1_000_000)
        self.start_worker()
        self.start_beat()
        first = None
        for wave in range(WAVES):
            for n in range(PER_WAVE):
                trade, _ = trade_place(account_id=accounts[n % len(accounts)], beans=1 + n)
                first = first or trade
            time.sleep(WAVE_PAUSE_S)
            self.assertTrue(all(p.alive() for p in self.processes), f"wave {wave}\n{self.logs()}")
        self.wait_drained(timeout=120)
        assert first is not None
        # Retention dropped whole slices: the first trade's rows are gone from both tables.
        self.wait_for(
            lambda: (
                not OutboxMessage.objects.filter(message_id=first.deduction_message_id).exists()
                and not MessageLog.objects.using(settings.BEANS_DATABASE)
                .filter(message_id=first.deduction_message_id)
                .exists()
            ),
            timeout=60,
            what="retention to drop the first trade's outbox and message-log rows",
        )
        trades = WAVES * PER_WAVE
        self.assertEqual(Trade.objects.count(), trades)
        self.assertLess(OutboxMessage.objects.count(), 2 * trades, "outbox rows were dropped")

        with connection.cursor() as cursor:
            for model in PARTITIONED:
                cursor.execute(f"SELECT count(*) FROM {partitions_default_table(model._meta.db_table)}")  # noqa: S608
                self.assertEqual(cursor.fetchone()[0], 0, "every insert found its slice made ahead")

        self.assertEqual(self.run_manage("verify"), 0, self.logs())
        with override_settings(**IN_PROCESS):
            verification = pipeline_verify()
        self.assertEqual(verification.violations, [])
        self.assertGreater(verification.past_outbox_retention, 0, "some trades were past retention")
        self.assertGreater(verification.past_message_log_retention, 0)
        self.assert_streams_contiguous()
