"""Per-account order (I7): several workers, one killed, one added, one removed."""

import signal
from collections import defaultdict

from django.conf import settings
from django.test import tag

from beans.models import LedgerEntry
from reliability.models import OutboxMessage, ParkedMessage
from trades.services import trade_place

from .pipeline import PipelineTestCase


@tag("integration")
class OrderingIntegrationTests(PipelineTestCase):
    def assert_per_account_order(self) -> None:
        """Each account's deductions were applied in the order its trades were placed."""
        seq_of = dict(OutboxMessage.objects.filter(task_name="beans.deduct").values_list("message_id", "seq"))
        applied: dict[int, list[int]] = defaultdict(list)
        entries = LedgerEntry.objects.filter(kind=LedgerEntry.Kind.DEDUCTION).order_by("id")
        for account_id, message_id in entries.values_list("account_id", "message_id"):
            assert message_id is not None  # a deduction always has one (ledger_deduction_has_message_id)
            applied[account_id].append(seq_of[message_id])
        self.assertTrue(applied)
        violations = {account: seqs for account, seqs in applied.items() if seqs != sorted(seqs)}
        self.assertEqual(violations, {}, "accounts whose deductions were applied out of order")
        self.assertFalse(ParkedMessage.objects.using(settings.BEANS_DATABASE).exists(), "nothing left parked")

    def place(self, accounts: list[int], count: int) -> None:
        for n in range(count):
            trade_place(account_id=accounts[n % len(accounts)], beans=10)

    def test_per_account_order_holds_with_several_workers_and_one_killed(self) -> None:
        accounts = self.create_accounts(5, balance=100_000)
        doomed = self.start_worker(name="w1", concurrency=2)
        self.start_worker(name="w2", concurrency=2)
        self.start_beat()
        self.place(accounts, 150)
        self.wait_for(
            lambda: LedgerEntry.objects.filter(kind=LedgerEntry.Kind.DEDUCTION).count() >= 40,
            timeout=120,
            what="both workers to be mid-stream",
        )
        doomed.kill(signal.SIGKILL)
        self.place(accounts, 150)
        self.wait_drained(timeout=240)
        self.assert_exactly_once(trades=300)
        self.assert_streams_contiguous()
        self.assert_per_account_order()

    def test_a_worker_added_and_one_removed_mid_stream_loses_and_doubles_nothing(self) -> None:
        accounts = self.create_accounts(5, balance=100_000)
        leaving = self.start_worker(name="w1", concurrency=2)
        self.start_beat()
        self.place(accounts, 100)
        self.start_worker(name="w2", concurrency=2)  # joins mid-stream
        self.place(accounts, 100)
        leaving.stop()  # warm shutdown mid-stream: its unacked messages go back to the broker
        self.place(accounts, 100)
        self.wait_drained(timeout=240)
        self.assert_exactly_once(trades=300)
        self.assert_streams_contiguous()
        self.assert_per_account_order()
