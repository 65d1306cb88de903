"""The admin is an audit console: every model is browsable and the records are read-only. The
only writes go through services: accounts (tests/beans/test_admin.py) and the outbox
(tests/reliability/test_admin.py)."""

from django.contrib import admin
from django.db import models

from beans.models import Account, LedgerEntry
from reliability.models import (
    DeadLetter,
    MessageLog,
    OutboxMessage,
    ReconcileRun,
    StreamCounter,
    StreamGap,
    StreamWatermark,
)
from tests.admin import AdminTestCase, admin_url
from trades.models import Trade

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


class AdminChangelistTests(AdminTestCase):
    def test_every_changelist_renders_for_a_superuser(self) -> None:
        for model in ALL_MODELS:
            with self.subTest(model=model.__name__):
                self.assertEqual(self.client.get(admin_url(model, "changelist")).status_code, 200)

    def test_every_detail_page_renders_for_a_superuser(self) -> None:
        for model in ALL_MODELS:
            obj = model._default_manager.order_by("pk").first()
            assert obj is not None
            with self.subTest(model=model.__name__):
                self.assertEqual(self.client.get(admin_url(model, "change", obj.pk)).status_code, 200)

    def test_one_message_id_search_finds_the_message_everywhere(self) -> None:
        for model in (OutboxMessage, MessageLog, Trade):
            with self.subTest(model=model.__name__):
                response = self.client.get(admin_url(model, "changelist"), {"q": str(self.message_id)})
                self.assertEqual(response.status_code, 200)
                self.assertEqual(response.context["cl"].result_count, 1)

    def test_search_with_text_that_is_not_an_id_still_renders(self) -> None:
        for model in ALL_MODELS:
            with self.subTest(model=model.__name__):
                response = self.client.get(admin_url(model, "changelist"), {"q": "no-such-thing"})
                self.assertEqual(response.status_code, 200)

    def test_date_drilldown_renders(self) -> None:
        year = self.trade.created_at.year
        for model in ALL_MODELS:
            field = admin.site.get_model_admin(model).date_hierarchy
            if field is None:  # StreamCounter has no date
                continue
            with self.subTest(model=model.__name__):
                response = self.client.get(admin_url(model, "changelist"), {f"{field}__year": year})
                self.assertEqual(response.status_code, 200)
                self.assertGreaterEqual(response.context["cl"].result_count, 1)


class AdminReadOnlyTests(AdminTestCase):
    def test_read_only_models_refuse_add(self) -> None:
        for model in READ_ONLY_MODELS:
            with self.subTest(model=model.__name__), self.assertLogs("django.request", level="WARNING"):
                self.assertEqual(self.client.get(admin_url(model, "add")).status_code, 403)

    def test_read_only_models_refuse_change_and_delete(self) -> None:
        entry = LedgerEntry.objects.get()
        with self.assertLogs("django.request", level="WARNING"):
            response = self.client.post(admin_url(LedgerEntry, "change", entry.pk), {"beans": 1_000_000})
            self.assertEqual(response.status_code, 403)
            self.assertEqual(self.client.post(admin_url(Trade, "delete", self.trade.pk)).status_code, 403)
        entry.refresh_from_db()
        self.assertEqual(entry.beans, 100)
        self.assertTrue(Trade.objects.filter(pk=self.trade.pk).exists())

    def test_account_balance_cannot_be_typed_over(self) -> None:
        with self.assertLogs("django.request", level="WARNING"):
            response = self.client.post(admin_url(Account, "change", self.account.pk), {"owner": "mallory"})
            self.assertEqual(response.status_code, 403)
            self.assertEqual(self.client.post(admin_url(Account, "delete", self.account.pk)).status_code, 403)
        self.account.refresh_from_db()
        self.assertEqual((self.account.owner, self.account.balance), ("alice", 100))
