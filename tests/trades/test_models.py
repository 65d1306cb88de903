"""Every named database constraint refuses the row it exists to refuse.

The rows are written with the ORM directly, bypassing the services, because the
point is that the database holds the invariant even when code gets it wrong.
"""

import uuid

from django.db import IntegrityError, transaction
from django.test import TestCase
from django.utils import timezone

from beans.models import Account, LedgerEntry
from reliability.ids import message_id_new
from reliability.models import MessageLog, OutboxMessage, StreamCounter
from reliability.produce.outbox import outbox_enqueue, outbox_enqueue_many
from trades.models import Trade, TradeStatusCount


def _account(balance: int = 100) -> Account:
    return Account.objects.create(owner="alice", balance=balance)


def _ledger_entry(account: Account, **fields: object) -> LedgerEntry:
    values: dict[str, object] = {"kind": LedgerEntry.Kind.CREDIT, "beans": 10, "balance_after": 110}
    values.update(fields)
    return LedgerEntry.objects.create(account=account, **values)


def _trade(**fields: object) -> Trade:
    values: dict[str, object] = {"account_id": 1, "beans": 10, "deduction_message_id": message_id_new()}
    values.update(fields)
    return Trade.objects.create(**values)


def _outbox(**fields: object) -> OutboxMessage:
    values: dict[str, object] = {
        "message_id": message_id_new(),
        "task_name": "beans.deduct",
        "queue": "beans",
        "stream": "deductions.1",
        "seq": 1,
        "payload": {},
    }
    values.update(fields)
    return OutboxMessage.objects.create(**values)


def _message_log(message_id: uuid.UUID, **fields: object) -> MessageLog:
    values: dict[str, object] = {"handler": "beans.deduct", "stream": "deductions.1", "seq": 1}
    values.update(fields)
    return MessageLog.objects.create(message_id=message_id, **values)


class AccountConstraintTests(TestCase):
    def test_negative_balance_is_refused(self) -> None:
        with self.assertRaisesMessage(IntegrityError, "account_balance_nonnegative"), transaction.atomic():
            _account(balance=-1)

    def test_balance_update_below_zero_is_refused(self) -> None:
        account = _account(balance=5)
        with self.assertRaisesMessage(IntegrityError, "account_balance_nonnegative"), transaction.atomic():
            Account.objects.filter(pk=account.pk).update(balance=-1)

    def test_zero_balance_is_allowed(self) -> None:
        self.assertEqual(_account(balance=0).balance, 0)


class LedgerEntryConstraintTests(TestCase):
    def setUp(self) -> None:
        self.account = _account()

    def test_zero_beans_entry_is_refused(self) -> None:
        with self.assertRaisesMessage(IntegrityError, "ledger_beans_positive"), transaction.atomic():
            _ledger_entry(self.account, beans=0)

    def test_negative_beans_entry_is_refused(self) -> None:
        with self.assertRaisesMessage(IntegrityError, "ledger_beans_positive"), transaction.atomic():
            _ledger_entry(self.account, beans=-5)

    def test_negative_balance_after_is_refused(self) -> None:
        with (
            self.assertRaisesMessage(IntegrityError, "ledger_balance_after_nonnegative"),
            transaction.atomic(),
        ):
            _ledger_entry(self.account, balance_after=-1)

    def test_deduction_without_message_id_is_refused(self) -> None:
        with (
            self.assertRaisesMessage(IntegrityError, "ledger_deduction_has_message_id"),
            transaction.atomic(),
        ):
            _ledger_entry(self.account, kind=LedgerEntry.Kind.DEDUCTION, message_id=None)

    def test_duplicate_message_id_is_refused(self) -> None:
        message_id = message_id_new()
        _ledger_entry(self.account, kind=LedgerEntry.Kind.DEDUCTION, message_id=message_id)
        with self.assertRaisesMessage(IntegrityError, "ledger_message_id_unique"), transaction.atomic():
            _ledger_entry(self.account, kind=LedgerEntry.Kind.DEDUCTION, message_id=message_id)

    def test_entries_without_message_id_do_not_collide(self) -> None:
        _ledger_entry(self.account)
        _ledger_entry(self.account)
        self.assertEqual(LedgerEntry.objects.filter(message_id__isnull=True).count(), 2)


class TradeConstraintTests(TestCase):
    def test_zero_beans_trade_is_refused(self) -> None:
        with self.assertRaisesMessage(IntegrityError, "trade_beans_positive"), transaction.atomic():
            _trade(beans=0)

    def test_duplicate_idempotency_key_of_one_client_is_refused(self) -> None:
        _trade(idempotency_key="key-1", client_id=7)
        with (
            self.assertRaisesMessage(IntegrityError, "trade_client_idempotency_key_unique"),
            transaction.atomic(),
        ):
            _trade(idempotency_key="key-1", client_id=7)

    def test_one_idempotency_key_of_two_clients_does_not_collide(self) -> None:
        _trade(idempotency_key="key-1", client_id=7)
        _trade(idempotency_key="key-1", client_id=8)
        self.assertEqual(Trade.objects.count(), 2)

    def test_trades_without_idempotency_key_do_not_collide(self) -> None:
        _trade(idempotency_key=None)
        _trade(idempotency_key=None)
        self.assertEqual(Trade.objects.count(), 2)

    def test_duplicate_deduction_message_id_is_refused(self) -> None:
        message_id = message_id_new()
        _trade(deduction_message_id=message_id)
        with self.assertRaisesMessage(IntegrityError, "trade_deduction_message_unique"), transaction.atomic():
            _trade(deduction_message_id=message_id)

    def test_settled_trade_without_settled_at_is_refused(self) -> None:
        with self.assertRaisesMessage(IntegrityError, "trade_settled_iff_settled_at"), transaction.atomic():
            _trade(status=Trade.Status.DEDUCTED, settled_at=None)

    def test_pending_trade_with_settled_at_is_refused(self) -> None:
        with self.assertRaisesMessage(IntegrityError, "trade_settled_iff_settled_at"), transaction.atomic():
            _trade(status=Trade.Status.PENDING, settled_at=timezone.now())


class TradeStatusCountConstraintTests(TestCase):
    def test_a_second_row_for_one_status_and_shard_is_refused(self) -> None:
        TradeStatusCount.objects.create(status=Trade.Status.DEDUCTED, shard=3, count=1)
        with (
            self.assertRaisesMessage(IntegrityError, "trade_status_count_status_shard_unique"),
            transaction.atomic(),
        ):
            TradeStatusCount.objects.create(status=Trade.Status.DEDUCTED, shard=3, count=1)

    def test_one_shard_of_two_statuses_does_not_collide(self) -> None:
        TradeStatusCount.objects.create(status=Trade.Status.DEDUCTED, shard=3, count=1)
        TradeStatusCount.objects.create(status=Trade.Status.REJECTED, shard=3, count=1)
        self.assertEqual(TradeStatusCount.objects.filter(shard=3).count(), 2)

    def test_a_count_of_pending_trades_is_refused(self) -> None:
        with (
            self.assertRaisesMessage(IntegrityError, "trade_status_count_settled_status"),
            transaction.atomic(),
        ):
            TradeStatusCount.objects.create(status=Trade.Status.PENDING, shard=0, count=1)

    def test_a_shard_out_of_range_is_refused(self) -> None:
        for shard in (-1, 16):
            with (
                self.subTest(shard=shard),
                self.assertRaisesMessage(IntegrityError, "trade_status_count_shard_in_range"),
                transaction.atomic(),
            ):
                TradeStatusCount.objects.create(status=Trade.Status.DEDUCTED, shard=shard, count=1)

    def test_a_negative_count_is_refused(self) -> None:
        row = TradeStatusCount.objects.create(status=Trade.Status.REJECTED, shard=0, count=0)
        with self.assertRaisesMessage(IntegrityError, "trade_status_count_nonnegative"), transaction.atomic():
            TradeStatusCount.objects.filter(pk=row.pk).update(count=-1)


class OutboxConstraintTests(TestCase):
    def test_duplicate_message_id_is_refused(self) -> None:
        message_id = message_id_new()
        _outbox(message_id=message_id, seq=1)
        with self.assertRaisesMessage(IntegrityError, "outbox_message_id_unique"), transaction.atomic():
            _outbox(message_id=message_id, seq=2)

    def test_stream_positions_are_handed_out_once_by_the_locked_counter(self) -> None:
        # (stream, seq) cannot be a unique key of the partitioned outbox (it lacks message_id):
        # the counter row, locked in the producing transaction, is what hands each seq out once.
        with transaction.atomic():
            outbox_enqueue(task_name="beans.deduct", queue="beans", stream="deductions.9", payload={})
        with self.assertRaises(RuntimeError), transaction.atomic():
            outbox_enqueue(task_name="beans.deduct", queue="beans", stream="deductions.9", payload={})
            raise RuntimeError("the producer's transaction rolls back")
        with transaction.atomic():
            outbox_enqueue_many(
                task_name="beans.deduct", queue="beans", messages=[("deductions.9", {}, None)] * 2
            )
        self.assertEqual(
            list(
                OutboxMessage.objects.filter(stream="deductions.9")
                .order_by("seq")
                .values_list("seq", flat=True)
            ),
            [1, 2, 3],
        )

    def test_a_message_id_is_unique_across_partitions(self) -> None:
        # Both rows route to one partition (the partition key is message_id), so the partition's
        # unique index sees both: in a time slice and in the default partition alike.
        for message_id in (message_id_new(), uuid.uuid4()):
            _outbox(message_id=message_id, seq=1)
            with self.assertRaisesMessage(IntegrityError, "outbox_message_id_unique"), transaction.atomic():
                _outbox(message_id=message_id, stream="deductions.2", seq=2)

    def test_same_seq_on_another_stream_is_allowed(self) -> None:
        _outbox(stream="deductions.1", seq=1)
        _outbox(stream="deductions.2", seq=1)
        self.assertEqual(OutboxMessage.objects.filter(seq=1).count(), 2)

    def test_seq_zero_is_refused(self) -> None:
        with self.assertRaisesMessage(IntegrityError, "outbox_seq_positive"), transaction.atomic():
            _outbox(seq=0)

    def test_sent_message_without_sent_at_is_refused(self) -> None:
        with self.assertRaisesMessage(IntegrityError, "outbox_sent_iff_sent_at"), transaction.atomic():
            _outbox(status=OutboxMessage.Status.SENT, sent_at=None)

    def test_pending_message_with_sent_at_is_refused(self) -> None:
        with self.assertRaisesMessage(IntegrityError, "outbox_sent_iff_sent_at"), transaction.atomic():
            _outbox(status=OutboxMessage.Status.PENDING, sent_at=timezone.now())

    def test_negative_stream_counter_is_refused(self) -> None:
        with self.assertRaisesMessage(IntegrityError, "stream_counter_seq_nonnegative"), transaction.atomic():
            StreamCounter.objects.create(stream="deductions.1", last_seq=-1)


class MessageLogConstraintTests(TestCase):
    def test_same_message_twice_for_one_handler_is_refused(self) -> None:
        message_id = message_id_new()
        _message_log(message_id, handler="beans.deduct")
        with (
            self.assertRaisesMessage(IntegrityError, "message_log_handler_message_unique"),
            transaction.atomic(),
        ):
            _message_log(message_id, handler="beans.deduct")

    def test_same_message_for_two_handlers_is_allowed(self) -> None:
        message_id = message_id_new()
        _message_log(message_id, handler="beans.deduct")
        _message_log(message_id, handler="trades.record_outcome")
        self.assertEqual(MessageLog.objects.filter(message_id=message_id).count(), 2)
