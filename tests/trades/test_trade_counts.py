"""How many trades are in each status (``trade_counts_by_status``, ``beans_trades`` on /metrics).

Pending trades are counted from the table; settled ones from ``TradeStatusCount``, which the
services that settle trades add to in the same statement. These tests check that the two ways
of counting agree with the table whatever path settled the trades.
"""

from typing import Any

from django.db import connection, transaction
from django.db.migrations.executor import MigrationExecutor
from django.db.models import Count, Sum
from django.test import TestCase, TransactionTestCase
from django.utils import timezone

from beans.services import account_create
from project.invariants import pipeline_violations
from reliability.envelope import Message
from reliability.ids import message_id_new
from trades.exceptions import InvalidOutcome
from trades.metrics import TradesCollector
from trades.models import TRADE_STATUS_COUNT_SHARDS, Trade, TradeStatusCount
from trades.selectors import trade_counts_by_status
from trades.services import (
    TradeOrder,
    trade_place,
    trade_record_outcome,
    trade_status_counts_recount,
    trades_place_many,
    trades_record_outcomes,
)


def _outcome(trade: Trade, outcome: str, *, balance_after: int | None = 70) -> Message:
    payload: dict[str, Any] = {
        "trade_id": trade.pk,
        "outcome": outcome,
        "balance_after": balance_after,
        "deduction_message_id": str(trade.deduction_message_id),
    }
    return Message(
        message_id=message_id_new(), stream="outcomes.deductions.1", seq=1, produced_at="", payload=payload
    )


def _table_counts() -> dict[str, int]:
    counts = {status: 0 for status in Trade.Status.values}
    for row in Trade.objects.values("status").annotate(n=Count("id")):
        counts[row["status"]] = row["n"]
    return counts


def _counts(pending: int = 0, deducted: int = 0, rejected: int = 0) -> dict[str, int]:
    return {"pending": pending, "deducted": deducted, "rejected": rejected}


class TradeCountsByStatusTests(TestCase):
    def setUp(self) -> None:
        account = account_create(owner="alice", balance=1_000)
        self.trades = [trade_place(account_id=account.pk, beans=10)[0] for _ in range(3)]
        self.trades += trades_place_many(orders=[TradeOrder(account_id=account.pk, beans=10)] * 3)[0]

    def _record(self, trade: Trade, outcome: str) -> str:
        with transaction.atomic():
            return trade_record_outcome(_outcome(trade, outcome))

    def _record_batch(self, pairs: list[tuple[Trade, str]]) -> list[str]:
        with transaction.atomic():
            return trades_record_outcomes([_outcome(trade, outcome) for trade, outcome in pairs])

    def test_verify_reports_a_count_that_drifted_from_the_table(self) -> None:
        self._record(self.trades[0], Trade.Status.DEDUCTED)
        self.assertFalse([v for v in pipeline_violations(in_flight_ok=True) if "for /metrics" in v])

        Trade.objects.filter(pk=self.trades[1].pk).update(
            status=Trade.Status.DEDUCTED, settled_at=timezone.now()
        )

        self.assertIn(
            "I5: 1 trades counted deducted for /metrics, 2 in the table",
            pipeline_violations(in_flight_ok=True),
        )

    def test_placed_trades_are_counted_pending(self) -> None:
        self.assertEqual(trade_counts_by_status(), _counts(pending=6))

    def test_a_deducted_outcome_moves_a_trade_from_pending_to_deducted(self) -> None:
        self._record(self.trades[0], Trade.Status.DEDUCTED)

        self.assertEqual(trade_counts_by_status(), _counts(pending=5, deducted=1))

    def test_a_rejected_outcome_moves_a_trade_from_pending_to_rejected(self) -> None:
        self._record(self.trades[0], Trade.Status.REJECTED)

        self.assertEqual(trade_counts_by_status(), _counts(pending=5, rejected=1))

    def test_a_batch_of_outcomes_is_counted_by_status(self) -> None:
        outcomes = self._record_batch(
            [
                (self.trades[0], Trade.Status.DEDUCTED),
                (self.trades[3], Trade.Status.REJECTED),
                (self.trades[4], Trade.Status.DEDUCTED),
            ]
        )

        self.assertEqual(outcomes, ["deducted", "rejected", "deducted"])
        self.assertEqual(trade_counts_by_status(), _counts(pending=3, deducted=2, rejected=1))

    def test_an_outcome_recorded_again_is_not_counted_twice(self) -> None:
        self._record(self.trades[0], Trade.Status.DEDUCTED)
        self._record_batch([(self.trades[1], Trade.Status.REJECTED)])

        self.assertEqual(self._record(self.trades[0], Trade.Status.DEDUCTED), "already settled")
        self.assertEqual(self._record(self.trades[1], Trade.Status.REJECTED), "already settled")

        self.assertEqual(trade_counts_by_status(), _counts(pending=4, deducted=1, rejected=1))

    def test_a_refused_outcome_counts_nothing(self) -> None:
        self._record(self.trades[0], Trade.Status.DEDUCTED)

        with self.assertRaises(InvalidOutcome):
            self._record(self.trades[0], Trade.Status.REJECTED)
        with self.assertRaises(InvalidOutcome):
            self._record_batch(
                [(self.trades[1], Trade.Status.DEDUCTED), (self.trades[0], Trade.Status.DEDUCTED)]
            )

        self.assertEqual(trade_counts_by_status(), _counts(pending=5, deducted=1))

    def test_counts_roll_back_with_the_settling_they_count(self) -> None:
        with self.assertRaises(RuntimeError), transaction.atomic():
            trades_record_outcomes([_outcome(self.trades[0], Trade.Status.DEDUCTED)])
            raise RuntimeError("the consumer's transaction fails after the handler")

        self.assertEqual(trade_counts_by_status(), _counts(pending=6))

    def test_a_session_adds_to_one_row_per_status_of_its_shard(self) -> None:
        self._record_batch([(self.trades[0], Trade.Status.DEDUCTED), (self.trades[1], Trade.Status.DEDUCTED)])
        self._record(self.trades[2], Trade.Status.DEDUCTED)
        self._record(self.trades[3], Trade.Status.REJECTED)
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            shard = cursor.fetchone()[0] % TRADE_STATUS_COUNT_SHARDS

        rows = set(TradeStatusCount.objects.values_list("status", "shard", "count"))

        self.assertEqual(rows, {("deducted", shard, 3), ("rejected", shard, 1)})

    def test_shards_are_summed(self) -> None:
        TradeStatusCount.objects.bulk_create(
            TradeStatusCount(status=Trade.Status.DEDUCTED, shard=shard, count=2)
            for shard in range(TRADE_STATUS_COUNT_SHARDS)
        )

        self.assertEqual(trade_counts_by_status()["deducted"], 2 * TRADE_STATUS_COUNT_SHARDS)

    def test_counts_agree_with_the_table_after_every_path(self) -> None:
        self._record(self.trades[0], Trade.Status.DEDUCTED)
        self._record(self.trades[0], Trade.Status.DEDUCTED)
        self._record_batch([(self.trades[1], Trade.Status.REJECTED), (self.trades[5], Trade.Status.DEDUCTED)])

        self.assertEqual(trade_counts_by_status(), _table_counts())

    def test_recount_repairs_trades_settled_around_the_services(self) -> None:
        self._record(self.trades[0], Trade.Status.DEDUCTED)
        Trade.objects.filter(pk=self.trades[1].pk).update(
            status=Trade.Status.REJECTED, settled_at=self.trades[1].created_at
        )
        self.assertNotEqual(trade_counts_by_status(), _table_counts())

        with self.assertLogs("trades", level="INFO"):
            recounted = trade_status_counts_recount()

        self.assertEqual(recounted, {"deducted": 1, "rejected": 1})
        self.assertEqual(trade_counts_by_status(), _table_counts())
        self.assertEqual(TradeStatusCount.objects.aggregate(total=Sum("count"))["total"], 2)

    def test_the_metrics_collector_reports_each_status(self) -> None:
        self._record(self.trades[0], Trade.Status.REJECTED)

        [family] = list(TradesCollector().collect())

        self.assertEqual(family.name, "beans_trades")
        self.assertEqual(
            {sample.labels["status"]: sample.value for sample in family.samples},
            {"pending": 5, "deducted": 0, "rejected": 1},
        )


class TradeStatusCountMigrationTests(TransactionTestCase):
    """The migration that creates the counter counts the trades settled before it."""

    before = [("trades", "0002_trade_client_idempotency_key")]
    after = [("trades", "0003_trade_status_count")]

    def tearDown(self) -> None:
        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        executor.migrate(executor.loader.graph.leaf_nodes())

    def test_the_trades_settled_before_are_counted(self) -> None:
        executor = MigrationExecutor(connection)
        executor.migrate(self.before)
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO trades_trade (account_id, beans, status, rejection_reason, client_id, "
                "deduction_message_id, created_at, updated_at, settled_at) "
                "SELECT 1, 1, s, '', 0, gen_random_uuid(), now(), now(), "
                "CASE WHEN s = 'pending' THEN NULL ELSE now() END "
                "FROM unnest(%s::text[]) AS s",
                [["pending", "deducted", "deducted", "rejected", "deducted", "pending"]],
            )

        executor.loader.build_graph()
        executor.migrate(self.after)

        self.assertEqual(trade_counts_by_status(), _counts(pending=2, deducted=3, rejected=1))
