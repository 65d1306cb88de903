"""Service tests of the bean service against the real database: accounts and deductions.

In ``TestCase`` the after-commit fast path never runs (``on_commit`` callbacks are
discarded with the test's transaction), so nothing here touches the broker.
"""

from typing import Any

from django.db import transaction
from django.test import TestCase

from beans import exceptions as beans_exceptions
from beans.models import Account, LedgerEntry
from beans.services import account_create, account_credit, deduction_apply
from reliability.envelope import Message
from reliability.models import OutboxMessage
from tests.fakes import fake_message


class AccountServiceTests(TestCase):
    def test_account_create_writes_an_opening_ledger_entry(self) -> None:
        account = account_create(owner="alice", balance=100)

        self.assertEqual(account.balance, 100)
        entry = LedgerEntry.objects.get(account=account)
        self.assertEqual((entry.kind, entry.beans, entry.balance_after), (LedgerEntry.Kind.OPENING, 100, 100))

    def test_account_with_no_opening_balance_has_no_ledger_entry(self) -> None:
        account = account_create(owner="alice")
        self.assertEqual(account.balance, 0)
        self.assertFalse(LedgerEntry.objects.exists())

    def test_invalid_opening_balance_is_refused(self) -> None:
        for balance in (-1, 1.5, "10", True):
            with self.subTest(balance=balance), self.assertRaises(beans_exceptions.InvalidAmount):
                account_create(owner="alice", balance=balance)  # type: ignore[arg-type]
        self.assertFalse(Account.objects.exists())

    def test_account_credit_adds_a_credit_entry_and_raises_the_balance(self) -> None:
        account = account_create(owner="alice", balance=100)

        entry = account_credit(account_id=account.pk, beans=50, note="welcome bonus")

        account.refresh_from_db()
        self.assertEqual(account.balance, 150)
        self.assertEqual(
            (entry.kind, entry.beans, entry.balance_after, entry.note),
            (LedgerEntry.Kind.CREDIT, 50, 150, "welcome bonus"),
        )

    def test_invalid_credit_is_refused(self) -> None:
        account = account_create(owner="alice", balance=100)
        for beans in (0, -5, 1.5, "5", True, None):
            with self.subTest(beans=beans), self.assertRaises(beans_exceptions.InvalidAmount):
                account_credit(account_id=account.pk, beans=beans)  # type: ignore[arg-type]
        account.refresh_from_db()
        self.assertEqual(account.balance, 100)
        self.assertEqual(LedgerEntry.objects.count(), 1)

    def test_credit_to_unknown_account_is_refused(self) -> None:
        with self.assertRaises(beans_exceptions.AccountNotFound):
            account_credit(account_id=999_999, beans=5)


class DeductionApplyTests(TestCase):
    def _apply(self, payload: dict[str, Any]) -> tuple[str, Message]:
        message = fake_message(payload)
        with transaction.atomic():
            return deduction_apply(message), message

    def test_sufficient_balance_is_deducted_once_and_reported(self) -> None:
        account = account_create(owner="alice", balance=100)

        outcome, message = self._apply({"trade_id": 7, "account_id": account.pk, "beans": 30})

        self.assertEqual(outcome, "deducted")
        account.refresh_from_db()
        self.assertEqual(account.balance, 70)
        entry = LedgerEntry.objects.get(kind=LedgerEntry.Kind.DEDUCTION)
        self.assertEqual(
            (entry.account_id, entry.beans, entry.balance_after, entry.message_id, entry.trade_id),
            (account.pk, 30, 70, message.message_id, 7),
        )
        report = OutboxMessage.objects.get()
        self.assertEqual((report.task_name, report.queue), ("trades.record_outcome", "trades"))
        self.assertEqual(report.stream, "outcomes.deductions.1")
        self.assertEqual(
            report.payload,
            {
                "trade_id": 7,
                "outcome": "deducted",
                "balance_after": 70,
                "deduction_message_id": str(message.message_id),
            },
        )

    def test_exact_balance_is_deducted_to_zero(self) -> None:
        account = account_create(owner="alice", balance=30)
        outcome, _ = self._apply({"trade_id": 7, "account_id": account.pk, "beans": 30})
        self.assertEqual(outcome, "deducted")
        account.refresh_from_db()
        self.assertEqual(account.balance, 0)

    def test_insufficient_balance_is_rejected_without_a_ledger_entry(self) -> None:
        account = account_create(owner="alice", balance=10)

        outcome, message = self._apply({"trade_id": 7, "account_id": account.pk, "beans": 30})

        self.assertEqual(outcome, "rejected")
        account.refresh_from_db()
        self.assertEqual(account.balance, 10)
        self.assertFalse(LedgerEntry.objects.filter(kind=LedgerEntry.Kind.DEDUCTION).exists())
        report = OutboxMessage.objects.get()
        self.assertEqual(report.task_name, "trades.record_outcome")
        self.assertEqual(report.payload["outcome"], "rejected")
        self.assertEqual(report.payload["balance_after"], 10)
        self.assertEqual(report.payload["deduction_message_id"], str(message.message_id))

    def test_unknown_account_raises_account_not_found(self) -> None:
        with self.assertRaises(beans_exceptions.AccountNotFound):
            self._apply({"trade_id": 7, "account_id": 999_999, "beans": 30})
        self.assertFalse(OutboxMessage.objects.exists())

    def test_malformed_payload_raises_invalid_deduction(self) -> None:
        account = account_create(owner="alice", balance=100)
        for payload in (
            {"trade_id": 7, "account_id": account.pk},
            {"trade_id": 7, "account_id": account.pk, "beans": 0},
            {"trade_id": 7, "account_id": account.pk, "beans": "30"},
            {"trade_id": None, "account_id": account.pk, "beans": 30},
        ):
            with self.subTest(payload=payload), self.assertRaises(beans_exceptions.InvalidDeduction):
                self._apply(payload)
        account.refresh_from_db()
        self.assertEqual(account.balance, 100)
