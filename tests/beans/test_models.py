"""Every named database constraint of the bean service refuses the row it exists to refuse.

The rows are written with the ORM directly, bypassing the services, because the
point is that the database holds the invariant even when code gets it wrong.
"""

from django.db import IntegrityError, transaction
from django.test import TestCase

from beans.models import Account, LedgerEntry
from reliability.ids import message_id_new


def _account(balance: int = 100) -> Account:
    return Account.objects.create(owner="alice", balance=balance)


def _ledger_entry(account: Account, **fields: object) -> LedgerEntry:
    values: dict[str, object] = {"kind": LedgerEntry.Kind.CREDIT, "beans": 10, "balance_after": 110}
    values.update(fields)
    return LedgerEntry.objects.create(account=account, **values)


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
