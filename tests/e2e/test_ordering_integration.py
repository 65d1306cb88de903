"""Per-account order (I7): several workers, one killed, one added, one removed."""

import signal

from django.test import tag

from beans.models import LedgerEntry
from trades.services import trade_place

from ..pipeline import PipelineTestCase


@tag("integration")
class OrderingIntegrationTests(PipelineTestCase):
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
