"""The admin is an audit console: every model is browsable, the records are read-only,
and the only writes go through services (open an account, credit it, publish now)."""

from unittest import mock

from django.contrib import admin
from django.contrib.auth.models import Permission, User
from django.db import models
from django.test import TestCase
from django.urls import reverse

from beans.models import Account, LedgerEntry
from beans.services import account_create
from reliability.consume.dead_letter import dead_letter_record
from reliability.consume.message_log import message_log_insert
from reliability.consume.streams import stream_position_record
from reliability.models import (
    DeadLetter,
    MessageLog,
    OutboxMessage,
    ReconcileRun,
    StreamCounter,
    StreamGap,
    StreamWatermark,
)
from trades.models import Trade
from trades.services import trade_place

ALL_MODELS: list[type[models.Model]] = [
    OutboxMessage,
    StreamCounter,
    MessageLog,
    DeadLetter,
    StreamWatermark,
    StreamGap,
    ReconcileRun,
    Account,
    LedgerEntry,
    Trade,
]
READ_ONLY_MODELS = [model for model in ALL_MODELS if model is not Account]


def _url(model: type[models.Model], view: str, *args: object) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


class AdminTestCase(TestCase):
    def setUp(self) -> None:
        self.admin_user = User.objects.create_superuser("admin", "admin@example.com", None)
        self.client.force_login(self.admin_user)
        # One row of every model, so the changelists render real columns.
        self.account = account_create(owner="alice", balance=100)
        self.trade, _ = trade_place(account_id=self.account.pk, beans=30)
        self.message_id = self.trade.deduction_message_id
        self.outbox = OutboxMessage.objects.get(message_id=self.message_id)
        message_log_insert(handler="beans.deduct", message_id=self.message_id, stream="deductions.1", seq=1)
        stream_position_record(handler="beans.deduct", stream="deductions.1", seq=3)  # seqs 1 and 2: gaps
        ReconcileRun.objects.create(database="default")
        with self.assertLogs("reliability", level="ERROR"):
            dead_letter_record(
                handler="beans.deduct", reason=DeadLetter.Reason.HANDLER_FAILED, detail="test", envelope={}
            )


class AdminChangelistTests(AdminTestCase):
    def test_every_changelist_renders_for_a_superuser(self) -> None:
        for model in ALL_MODELS:
            with self.subTest(model=model.__name__):
                self.assertEqual(self.client.get(_url(model, "changelist")).status_code, 200)

    def test_every_detail_page_renders_for_a_superuser(self) -> None:
        for model in ALL_MODELS:
            obj = model._default_manager.order_by("pk").first()
            assert obj is not None
            with self.subTest(model=model.__name__):
                self.assertEqual(self.client.get(_url(model, "change", obj.pk)).status_code, 200)

    def test_one_message_id_search_finds_the_message_everywhere(self) -> None:
        for model in (OutboxMessage, MessageLog, Trade):
            with self.subTest(model=model.__name__):
                response = self.client.get(_url(model, "changelist"), {"q": str(self.message_id)})
                self.assertEqual(response.status_code, 200)
                self.assertEqual(response.context["cl"].result_count, 1)

    def test_search_with_text_that_is_not_an_id_still_renders(self) -> None:
        for model in ALL_MODELS:
            with self.subTest(model=model.__name__):
                response = self.client.get(_url(model, "changelist"), {"q": "no-such-thing"})
                self.assertEqual(response.status_code, 200)

    def test_date_drilldown_renders(self) -> None:
        year = self.trade.created_at.year
        for model in ALL_MODELS:
            field = admin.site.get_model_admin(model).date_hierarchy
            if field is None:  # StreamCounter has no date
                continue
            with self.subTest(model=model.__name__):
                response = self.client.get(_url(model, "changelist"), {f"{field}__year": year})
                self.assertEqual(response.status_code, 200)
                self.assertGreaterEqual(response.context["cl"].result_count, 1)


class AdminReadOnlyTests(AdminTestCase):
    def test_read_only_models_refuse_add(self) -> None:
        for model in READ_ONLY_MODELS:
            with self.subTest(model=model.__name__), self.assertLogs("django.request", level="WARNING"):
                self.assertEqual(self.client.get(_url(model, "add")).status_code, 403)

    def test_read_only_models_refuse_change_and_delete(self) -> None:
        entry = LedgerEntry.objects.get()
        with self.assertLogs("django.request", level="WARNING"):
            response = self.client.post(_url(LedgerEntry, "change", entry.pk), {"beans": 1_000_000})
            self.assertEqual(response.status_code, 403)
            self.assertEqual(self.client.post(_url(Trade, "delete", self.trade.pk)).status_code, 403)
        entry.refresh_from_db()
        self.assertEqual(entry.beans, 100)
        self.assertTrue(Trade.objects.filter(pk=self.trade.pk).exists())

    def test_account_balance_cannot_be_typed_over(self) -> None:
        with self.assertLogs("django.request", level="WARNING"):
            response = self.client.post(_url(Account, "change", self.account.pk), {"owner": "mallory"})
            self.assertEqual(response.status_code, 403)
            self.assertEqual(self.client.post(_url(Account, "delete", self.account.pk)).status_code, 403)
        self.account.refresh_from_db()
        self.assertEqual((self.account.owner, self.account.balance), ("alice", 100))


class AccountAdminTests(AdminTestCase):
    def _credit(self, ids: list[int], beans: object) -> list[str]:
        response = self.client.post(
            _url(Account, "changelist"),
            {"action": "credit_accounts", "_selected_action": ids, "beans": beans, "index": 0},
            follow=True,
        )
        return [str(message) for message in response.context["messages"]]

    def test_add_form_asks_for_owner_and_opening_balance(self) -> None:
        response = self.client.get(_url(Account, "add"))
        self.assertContains(response, 'name="owner"')
        self.assertContains(response, 'name="opening_balance"')
        self.assertNotContains(response, 'name="balance"')

    def test_changelist_offers_the_credit_action_with_an_amount(self) -> None:
        response = self.client.get(_url(Account, "changelist"))
        self.assertContains(response, 'value="credit_accounts"')
        self.assertContains(response, 'name="beans"')
        self.assertNotContains(response, 'value="delete_selected"')

    def test_adding_an_account_opens_it_through_the_service(self) -> None:
        response = self.client.post(_url(Account, "add"), {"owner": "bob", "opening_balance": 40})

        self.assertRedirects(response, _url(Account, "changelist"))
        account = Account.objects.get(owner="bob")
        self.assertEqual(account.balance, 40)
        entry = LedgerEntry.objects.get(account=account)
        self.assertEqual((entry.kind, entry.beans, entry.balance_after), (LedgerEntry.Kind.OPENING, 40, 40))

    def test_negative_opening_balance_is_refused_by_the_form(self) -> None:
        response = self.client.post(_url(Account, "add"), {"owner": "bob", "opening_balance": -1})
        self.assertEqual(response.status_code, 200)
        self.assertFalse(Account.objects.filter(owner="bob").exists())

    def test_credit_action_credits_through_a_ledger_entry(self) -> None:
        other = account_create(owner="bob", balance=0)

        feedback = self._credit([self.account.pk, other.pk], 25)

        self.assertEqual(feedback, ["Credited 25 beans to 2 account(s)."])
        self.account.refresh_from_db()
        other.refresh_from_db()
        self.assertEqual((self.account.balance, other.balance), (125, 25))
        credits = LedgerEntry.objects.filter(kind=LedgerEntry.Kind.CREDIT).order_by("account_id")
        self.assertEqual(
            [(e.account_id, e.beans, e.balance_after) for e in credits],
            [(self.account.pk, 25, 125), (other.pk, 25, 25)],
        )
        self.assertEqual(credits[0].note, "admin credit by admin")

    def test_credit_action_without_beans_credits_nothing(self) -> None:
        for beans in ("", "0", "-5", "abc"):
            with self.subTest(beans=beans):
                (feedback,) = self._credit([self.account.pk], beans)
                self.assertTrue(feedback.startswith("No account credited: beans:"), feedback)
        self.account.refresh_from_db()
        self.assertEqual(self.account.balance, 100)
        self.assertFalse(LedgerEntry.objects.filter(kind=LedgerEntry.Kind.CREDIT).exists())

    def test_credit_action_needs_the_change_permission(self) -> None:
        viewer = User.objects.create_user("viewer", password=None, is_staff=True)
        viewer.user_permissions.add(Permission.objects.get(codename="view_account"))
        self.client.force_login(viewer)

        self._credit([self.account.pk], 25)

        self.account.refresh_from_db()
        self.assertEqual(self.account.balance, 100)


class OutboxAdminTests(AdminTestCase):
    def _publish(self, ids: list[int]) -> list[str]:
        response = self.client.post(
            _url(OutboxMessage, "changelist"),
            {"action": "publish_now", "_selected_action": ids, "index": 0},
            follow=True,
        )
        return [str(message) for message in response.context["messages"]]

    def test_publish_now_marks_rows_sent_after_the_broker_confirmed(self) -> None:
        with mock.patch("reliability.produce.relay.publisher") as publisher:
            feedback = self._publish([self.outbox.pk])

        self.assertEqual(feedback, ["1 of 1 pending messages published and confirmed by the broker."])
        publisher.return_value.publish.assert_called_once()
        self.assertEqual(publisher.return_value.publish.call_args.kwargs["message_id"], str(self.message_id))
        self.outbox.refresh_from_db()
        self.assertEqual(self.outbox.status, OutboxMessage.Status.SENT)
        self.assertIsNotNone(self.outbox.sent_at)

    def test_publish_now_skips_rows_already_sent(self) -> None:
        with mock.patch("reliability.produce.relay.publisher") as publisher:
            self._publish([self.outbox.pk])
            feedback = self._publish([self.outbox.pk])
        self.assertEqual(feedback, ["None of the selected messages is pending."])
        publisher.return_value.publish.assert_called_once()

    def test_publish_now_needs_the_change_permission(self) -> None:
        viewer = User.objects.create_user("viewer", password=None, is_staff=True)
        viewer.user_permissions.add(Permission.objects.get(codename="view_outboxmessage"))
        self.client.force_login(viewer)

        with mock.patch("reliability.produce.relay.publisher") as publisher:
            self._publish([self.outbox.pk])

        publisher.return_value.publish.assert_not_called()
        self.outbox.refresh_from_db()
        self.assertEqual(self.outbox.status, OutboxMessage.Status.PENDING)
