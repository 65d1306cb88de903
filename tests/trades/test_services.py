"""Service tests of the trade service against the real database: placing trades, one or a batch,
the command that places them, outcomes, and both services wired by their envelopes.

In ``TestCase`` the after-commit fast path never runs (``on_commit`` callbacks are
discarded with the test's transaction), so nothing here touches the broker.
"""

import io
import uuid
from typing import Any
from unittest import mock

from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import IntegrityError, connection, transaction
from django.test import TestCase, override_settings
from django.test.utils import CaptureQueriesContext

from beans.models import Account, LedgerEntry
from beans.services import account_create, deduction_apply
from reliability.envelope import envelope_parse, outbox_envelope
from reliability.exceptions import OutboxUsageError
from reliability.ids import message_id_new
from reliability.models import OutboxMessage, StreamCounter
from reliability.produce.outbox import outbox_enqueue
from tests.fakes import fake_message
from trades.exceptions import AccountNotFound, IdempotencyConflict, InvalidOutcome, TradeInvalid
from trades.models import Trade
from trades.services import TradeOrder, deduction_stream, trade_place, trade_record_outcome, trades_place_many


class TradePlaceTests(TestCase):
    def setUp(self) -> None:
        self.account = account_create(owner="alice", balance=100)

    def test_trade_and_its_deduction_message_are_written_together(self) -> None:
        trade, created = trade_place(account_id=self.account.pk, beans=30)

        self.assertTrue(created)
        self.assertEqual(trade.status, Trade.Status.PENDING)
        message = OutboxMessage.objects.get()
        self.assertEqual(message.message_id, trade.deduction_message_id)
        self.assertEqual(message.task_name, "beans.deduct")
        self.assertEqual(message.queue, "beans")
        self.assertEqual(message.stream, deduction_stream(self.account.pk))
        self.assertEqual(message.seq, 1)
        self.assertEqual(message.status, OutboxMessage.Status.PENDING)
        self.assertEqual(message.payload, {"trade_id": trade.pk, "account_id": self.account.pk, "beans": 30})

    def test_trade_is_not_written_when_the_outbox_insert_fails(self) -> None:
        # The outbox refuses the message (another message has its id): the trade and the
        # stream's seq, written by the same statement, are not written either.
        taken = message_id_new()
        with transaction.atomic():
            outbox_enqueue(
                task_name="other.task", queue="other", stream="other", payload={}, message_id=taken
            )
        with (
            mock.patch("trades.services.message_id_new", return_value=taken),
            self.assertRaisesMessage(IntegrityError, "outbox_message_id_unique"),
            transaction.atomic(),
        ):
            trade_place(account_id=self.account.pk, beans=30)

        self.assertEqual(Trade.objects.count(), 0)
        self.assertEqual(OutboxMessage.objects.count(), 1)
        self.assertFalse(StreamCounter.objects.filter(stream=deduction_stream(self.account.pk)).exists())

    def test_a_stream_of_another_task_is_refused_and_nothing_is_written(self) -> None:
        StreamCounter.objects.create(
            stream=deduction_stream(self.account.pk), last_seq=4, task_name="other.task", queue="other"
        )
        with (
            self.assertRaisesMessage(OutboxUsageError, "belongs to another task or queue"),
            transaction.atomic(),
        ):
            trade_place(account_id=self.account.pk, beans=30)

        self.assertEqual((Trade.objects.count(), OutboxMessage.objects.count()), (0, 0))
        self.assertEqual(StreamCounter.objects.get().last_seq, 4)

    def test_an_accounts_trades_share_one_stream_with_contiguous_seqs(self) -> None:
        for _ in range(3):
            trade_place(account_id=self.account.pk, beans=1)

        rows = OutboxMessage.objects.order_by("id").values_list("stream", "seq")
        self.assertEqual(list(rows), [(deduction_stream(self.account.pk), seq) for seq in (1, 2, 3)])

    def test_repeated_idempotency_key_returns_the_first_trade(self) -> None:
        first, first_created = trade_place(account_id=self.account.pk, beans=30, idempotency_key="key-1")
        again, again_created = trade_place(account_id=self.account.pk, beans=30, idempotency_key="key-1")

        self.assertTrue(first_created)
        self.assertFalse(again_created)
        self.assertEqual(again.pk, first.pk)
        self.assertEqual(Trade.objects.count(), 1)
        self.assertEqual(OutboxMessage.objects.count(), 1)

    def test_idempotency_key_reused_for_other_beans_is_a_conflict(self) -> None:
        trade_place(account_id=self.account.pk, beans=30, idempotency_key="key-1")

        with self.assertRaises(IdempotencyConflict):
            trade_place(account_id=self.account.pk, beans=31, idempotency_key="key-1")
        self.assertEqual(Trade.objects.count(), 1)
        self.assertEqual(OutboxMessage.objects.count(), 1)

    def test_idempotency_key_reused_for_another_account_is_a_conflict(self) -> None:
        other = account_create(owner="bob", balance=100)
        trade_place(account_id=self.account.pk, beans=30, idempotency_key="key-1")

        with self.assertRaises(IdempotencyConflict):
            trade_place(account_id=other.pk, beans=30, idempotency_key="key-1")
        self.assertEqual(Trade.objects.count(), 1)

    def test_invalid_beans_are_refused_and_nothing_is_written(self) -> None:
        for beans in (0, -1, 1.5, "100", True, None, settings.TRADES_MAX_BEANS + 1):
            with self.subTest(beans=beans), self.assertRaises(TradeInvalid):
                trade_place(account_id=self.account.pk, beans=beans)  # type: ignore[arg-type]
        self.assertEqual(Trade.objects.count(), 0)
        self.assertEqual(OutboxMessage.objects.count(), 0)

    @override_settings(TRADES_MAX_BEANS=50)
    def test_beans_up_to_the_maximum_are_accepted(self) -> None:
        trade, _ = trade_place(account_id=self.account.pk, beans=50)
        self.assertEqual(trade.beans, 50)
        with self.assertRaises(TradeInvalid):
            trade_place(account_id=self.account.pk, beans=51)

    def test_invalid_account_id_is_refused(self) -> None:
        for account_id in (0, -1, "1", 1.0, True, None, 2**63):
            with self.subTest(account_id=account_id), self.assertRaises(TradeInvalid):
                trade_place(account_id=account_id, beans=1)  # type: ignore[arg-type]
        self.assertEqual(Trade.objects.count(), 0)

    def test_invalid_idempotency_key_is_refused(self) -> None:
        for key in ("", "k" * 201):
            with self.subTest(length=len(key)), self.assertRaises(TradeInvalid):
                trade_place(account_id=self.account.pk, beans=1, idempotency_key=key)
        self.assertEqual(Trade.objects.count(), 0)

    def test_unknown_account_is_refused_and_nothing_is_written(self) -> None:
        with self.assertRaises(AccountNotFound):
            trade_place(account_id=self.account.pk + 1000, beans=1)
        self.assertEqual(Trade.objects.count(), 0)
        self.assertEqual(OutboxMessage.objects.count(), 0)

    def test_a_trade_is_placed_in_one_statement_which_checks_the_account(self) -> None:
        """The bean service's accounts share this database: its QuerySet of accounts is folded
        into the insert, so the check costs no round trip of its own."""
        with CaptureQueriesContext(connection) as queries:
            trade_place(account_id=self.account.pk, beans=1)
        (statement,) = [query["sql"] for query in queries.captured_queries]
        self.assertIn(f'EXISTS (SELECT "{Account._meta.db_table}"."id"', statement)
        with CaptureQueriesContext(connection) as queries, self.assertRaises(AccountNotFound):
            trade_place(account_id=self.account.pk + 1000, beans=1)
        self.assertEqual(len(queries.captured_queries), 1, "no idempotency key: nothing else to look up")

    def test_with_the_accounts_in_another_database_the_account_is_checked_before(self) -> None:
        with mock.patch("trades.services.accounts_database", return_value="elsewhere"):
            with CaptureQueriesContext(connection) as queries:
                trade_place(account_id=self.account.pk, beans=1)
            with self.assertRaises(AccountNotFound):
                trade_place(account_id=self.account.pk + 1000, beans=1)
        check, insert = [query["sql"] for query in queries.captured_queries]
        self.assertIn(f'FROM "{Account._meta.db_table}"', check)
        self.assertNotIn("EXISTS", insert)
        self.assertEqual(Trade.objects.count(), 1)


class TradesPlaceManyTests(TestCase):
    """A batch placement records exactly what one placement per trade would, all or nothing."""

    def setUp(self) -> None:
        self.alice = account_create(owner="alice", balance=100).pk
        self.bob = account_create(owner="bob", balance=100).pk

    def orders(self, *pairs: tuple[int, int]) -> list[TradeOrder]:
        return [TradeOrder(account_id=account, beans=beans) for account, beans in pairs]

    def assert_nothing_written(self) -> None:
        self.assertEqual(Trade.objects.count(), 0)
        self.assertEqual(OutboxMessage.objects.count(), 0)
        self.assertEqual(StreamCounter.objects.filter(last_seq__gt=0).count(), 0)

    def test_each_trade_gets_its_own_message_in_its_accounts_stream_in_order(self) -> None:
        trade_place(account_id=self.alice, beans=5)  # the batch continues alice's stream
        trades, created = trades_place_many(
            orders=self.orders((self.alice, 10), (self.bob, 20), (self.alice, 30), (self.alice, 40))
        )

        self.assertTrue(created)
        self.assertEqual(
            [(t.account_id, t.beans) for t in trades],
            [(self.alice, 10), (self.bob, 20), (self.alice, 30), (self.alice, 40)],
        )
        self.assertEqual([t.pk for t in trades], sorted(t.pk for t in trades), "ids in the order given")
        for trade in trades:
            message = OutboxMessage.objects.get(message_id=trade.deduction_message_id)
            self.assertEqual(
                message.payload, {"trade_id": trade.pk, "account_id": trade.account_id, "beans": trade.beans}
            )
            self.assertEqual(
                (message.task_name, message.stream), ("beans.deduct", deduction_stream(trade.account_id))
            )
        alice_seqs = [
            OutboxMessage.objects.get(message_id=t.deduction_message_id).seq
            for t in trades
            if t.account_id == self.alice
        ]
        self.assertEqual(alice_seqs, [2, 3, 4], "alice's trades follow her stream, in the order given")
        self.assertEqual(len({t.deduction_message_id for t in trades}), 4)

    def test_one_bad_order_refuses_the_whole_batch(self) -> None:
        bad_batches: dict[str, Any] = {
            "not a list": {"account": self.alice, "beans": 1},
            "empty": [],
            "too many": self.orders(*[(self.alice, 1)] * (settings.TRADES_BATCH_MAX + 1)),
            "zero beans": self.orders((self.alice, 1), (self.bob, 0)),
            "beans as text": [TradeOrder(account_id=self.alice, beans="5")],  # type: ignore[arg-type]
            "not an order": [[self.alice, 5]],
            # The dict orders of the callers written before TradeOrder (bench/run.py).
            "beans as text, in a dict": [{"account": self.alice, "beans": "5"}],
            "an extra field": [{"account": self.alice, "beans": 5, "price": 1}],
        }
        for label, orders in bad_batches.items():
            with self.subTest(label), self.assertRaises(TradeInvalid):
                trades_place_many(orders=orders)
        with self.assertRaisesMessage(TradeInvalid, "trades[1].beans must be positive"):
            trades_place_many(orders=self.orders((self.alice, 1), (self.bob, 0)))
        with self.assertRaisesMessage(AccountNotFound, f"account(s) {self.bob + 7} do not exist"):
            trades_place_many(orders=self.orders((self.alice, 1), (self.bob + 7, 1)))
        self.assert_nothing_written()

    def test_a_failure_half_way_rolls_back_every_trade(self) -> None:
        with (
            mock.patch("trades.services.outbox_enqueue_many", side_effect=RuntimeError("outbox down")),
            self.assertRaisesMessage(RuntimeError, "outbox down"),
        ):
            trades_place_many(orders=self.orders((self.alice, 1), (self.bob, 1)))
        self.assert_nothing_written()

    def test_a_repeated_batch_key_returns_the_first_batch(self) -> None:
        orders = self.orders((self.alice, 10), (self.bob, 20))
        first, first_created = trades_place_many(orders=orders, idempotency_key="batch-1")
        again, again_created = trades_place_many(orders=orders, idempotency_key="batch-1")

        self.assertEqual((first_created, again_created), (True, False))
        self.assertEqual([t.pk for t in again], [t.pk for t in first])
        self.assertEqual([t.idempotency_key for t in first], ["batch-1/0", "batch-1/1"])
        self.assertEqual((Trade.objects.count(), OutboxMessage.objects.count()), (2, 2))

    def test_a_batch_key_reused_for_other_orders_is_a_conflict(self) -> None:
        trades_place_many(orders=self.orders((self.alice, 10), (self.bob, 20)), idempotency_key="batch-1")
        for label, orders in {
            "other beans": self.orders((self.alice, 10), (self.bob, 21)),
            "another order added": self.orders((self.alice, 10), (self.bob, 20), (self.bob, 1)),
            "fewer orders": self.orders((self.alice, 10)),
        }.items():
            with self.subTest(label), self.assertRaises(IdempotencyConflict):
                trades_place_many(orders=orders, idempotency_key="batch-1")
        self.assertEqual((Trade.objects.count(), OutboxMessage.objects.count()), (2, 2))

    def test_a_batch_key_too_long_for_its_trades_keys_is_refused(self) -> None:
        with self.assertRaisesMessage(TradeInvalid, "must be 1 to 198 characters"):
            trades_place_many(orders=self.orders((self.alice, 1)), idempotency_key="k" * 199)
        self.assert_nothing_written()


class PlaceTradesCommandTests(TestCase):
    def test_trades_are_placed_in_batches_over_the_accounts_in_turn(self) -> None:
        accounts = [account_create(owner=name, balance=100).pk for name in ("alice", "bob")]
        out = io.StringIO()
        call_command(
            "place_trades", "--count", "7", "--beans", "3", "--batch", "3", "--no-progress", stdout=out
        )

        self.assertIn("placed 7 trades", out.getvalue())
        self.assertEqual(
            list(Trade.objects.order_by("pk").values_list("account_id", flat=True)),
            [accounts[n % 2] for n in range(7)],
        )
        self.assertEqual(OutboxMessage.objects.count(), 7)
        with self.assertRaisesMessage(CommandError, "--batch must be from 1 to"):
            call_command("place_trades", "--count", "1", "--batch", str(settings.TRADES_BATCH_MAX + 1))


class TradeRecordOutcomeTests(TestCase):
    def setUp(self) -> None:
        account = account_create(owner="alice", balance=100)
        self.trade, _ = trade_place(account_id=account.pk, beans=30)

    def _record(
        self, outcome: str, *, balance_after: int = 70, deduction_message_id: uuid.UUID | None = None
    ) -> str:
        message = fake_message(
            {
                "trade_id": self.trade.pk,
                "outcome": outcome,
                "balance_after": balance_after,
                "deduction_message_id": str(deduction_message_id or self.trade.deduction_message_id),
            },
            stream="outcomes.deductions.1",
        )
        with transaction.atomic():
            return trade_record_outcome(message)

    def test_deducted_outcome_settles_the_pending_trade(self) -> None:
        self.assertEqual(self._record("deducted"), "deducted")

        self.trade.refresh_from_db()
        self.assertEqual(self.trade.status, Trade.Status.DEDUCTED)
        self.assertEqual(self.trade.balance_after, 70)
        self.assertIsNotNone(self.trade.settled_at)
        self.assertEqual(self.trade.rejection_reason, "")

    def test_rejected_outcome_settles_with_a_reason(self) -> None:
        self.assertEqual(self._record("rejected", balance_after=10), "rejected")

        self.trade.refresh_from_db()
        self.assertEqual(self.trade.status, Trade.Status.REJECTED)
        self.assertEqual(self.trade.rejection_reason, "insufficient funds")
        self.assertIsNotNone(self.trade.settled_at)

    def test_same_outcome_again_changes_nothing(self) -> None:
        self._record("deducted")
        self.trade.refresh_from_db()
        settled_at = self.trade.settled_at

        self.assertEqual(self._record("deducted", balance_after=1), "already settled")

        self.trade.refresh_from_db()
        self.assertEqual((self.trade.settled_at, self.trade.balance_after), (settled_at, 70))

    def test_contradicting_outcome_is_refused(self) -> None:
        self._record("deducted")

        with self.assertRaises(InvalidOutcome):
            self._record("rejected")
        self.trade.refresh_from_db()
        self.assertEqual(self.trade.status, Trade.Status.DEDUCTED)

    def test_outcome_for_another_deduction_is_refused(self) -> None:
        with self.assertRaises(InvalidOutcome):
            self._record("deducted", deduction_message_id=message_id_new())
        self.trade.refresh_from_db()
        self.assertEqual(self.trade.status, Trade.Status.PENDING)

    def test_unknown_outcome_is_refused(self) -> None:
        with self.assertRaises(InvalidOutcome):
            self._record("maybe")

    def test_outcome_for_unknown_trade_is_refused(self) -> None:
        message = fake_message({"trade_id": 999_999, "outcome": "deducted"})
        with self.assertRaises(InvalidOutcome), transaction.atomic():
            trade_record_outcome(message)


class PipelineServiceTests(TestCase):
    """The two services wired by their envelopes, without a broker in between."""

    def test_placed_trade_is_deducted_and_settled_through_its_messages(self) -> None:
        account = account_create(owner="alice", balance=100)
        trade, _ = trade_place(account_id=account.pk, beans=30)

        deduction = envelope_parse(outbox_envelope(OutboxMessage.objects.get(task_name="beans.deduct")))
        with transaction.atomic():
            deduction_apply(deduction)
        report = envelope_parse(outbox_envelope(OutboxMessage.objects.get(task_name="trades.record_outcome")))
        with transaction.atomic():
            trade_record_outcome(report)

        trade.refresh_from_db()
        account.refresh_from_db()
        self.assertEqual((trade.status, trade.balance_after), (Trade.Status.DEDUCTED, 70))
        self.assertEqual(account.balance, 70)
        self.assertEqual(LedgerEntry.objects.get(kind=LedgerEntry.Kind.DEDUCTION).trade_id, trade.pk)
