"""The admin tests' base: a logged-in superuser and one row of every model of the pipeline."""

from django.contrib.auth.models import User
from django.db import models
from django.test import TestCase
from django.urls import reverse

from beans.services import account_create
from reliability.consume.dead_letter import dead_letter_record
from reliability.consume.message_log import message_log_insert
from reliability.consume.streams import stream_position_record
from reliability.models import DeadLetter, OutboxMessage, ReconcileRun
from trades.services import trade_place


def admin_url(model: type[models.Model], view: str, *args: object) -> str:
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
