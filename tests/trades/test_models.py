"""Every named database constraint of the trade service refuses the row it exists to refuse.

The rows are written with the ORM directly, bypassing the services, because the
point is that the database holds the invariant even when code gets it wrong. The bean
service's constraints are in ``tests/beans/test_models.py``, the library's in
``tests/reliability/test_models.py``.
"""

from django.db import IntegrityError, transaction
from django.test import TestCase
from django.utils import timezone

from reliability.ids import message_id_new
from trades.models import Trade, TradeStatusCount


def _trade(**fields: object) -> Trade:
    values: dict[str, object] = {"account_id": 1, "beans": 10, "deduction_message_id": message_id_new()}
    values.update(fields)
    return Trade.objects.create(**values)


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
