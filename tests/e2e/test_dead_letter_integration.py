"""Poison messages reach the DeadLetter table with a reason; replay is exactly-once."""

import json
import tempfile
import uuid
from unittest import mock

from celery import current_app
from django.conf import settings
from django.test import tag
from kombu import Connection

from beans.models import Account, LedgerEntry
from beans.services import account_credit
from harness.rabbitmq import queue_message_counts
from reliability.models import DeadLetter, MessageLog
from reliability.ops.dead_letters import dead_letter_replay
from trades.models import Trade
from trades.services import trade_place

from ..pipeline import PipelineTestCase


def dead_letters(**filters: object) -> list[DeadLetter]:
    return list(DeadLetter.objects.using(settings.BEANS_DATABASE).filter(**filters).order_by("id"))


@tag("integration")
class DeadLetterIntegrationTests(PipelineTestCase):
    def test_handler_that_keeps_failing_is_dead_lettered_after_the_delivery_limit(self) -> None:
        (account,) = self.create_accounts(1, balance=1000)
        poisoned, _ = trade_place(account_id=account, beans=100)
        failing = self.start_worker(
            env={
                "RELIABILITY_FAULT_INJECTION": "1",
                "RELIABILITY_FAULTS": "consume.before_handler=raise:1000",
                "RELIABILITY_FAULT_DIR": tempfile.mkdtemp(prefix="faults-"),
            }
        )
        self.start_beat()
        self.wait_for(
            lambda: bool(dead_letters(reason=DeadLetter.Reason.DELIVERY_LIMIT)),
            timeout=120,
            what="the broker to dead-letter it and the drain to record it",
        )
        failing.stop()
        (letter,) = dead_letters()
        self.assertEqual(letter.message_id, poisoned.deduction_message_id)
        self.assertEqual(letter.handler, "beans.deduct")
        self.assertEqual(letter.queue, "beans")
        self.assertIn("x-death", letter.headers or {})
        self.assertEqual((letter.envelope or {})["message_id"], str(poisoned.deduction_message_id))
        self.assertFalse(LedgerEntry.objects.filter(message_id=poisoned.deduction_message_id).exists())

        for _ in range(5):  # the queue keeps moving behind it
            trade_place(account_id=account, beans=100)
        self.start_worker(name="fixed")
        self.wait_for(
            lambda: Trade.objects.filter(status=Trade.Status.PENDING).count() == 1,
            timeout=60,
            what="the others",
        )
        dead_letter_replay(letter_id=letter.pk, using=settings.BEANS_DATABASE)
        self.wait_drained()
        self.assert_exactly_once(trades=6)

    def test_unknown_account_is_dead_lettered_at_once_and_replays_exactly_once_when_it_exists(self) -> None:
        (known,) = self.create_accounts(1, balance=1000)
        unknown = known + 1000
        # As if the account check had been skipped (e.g. a stale account view).
        with mock.patch("trades.services._account_exists_sql", return_value="TRUE"):
            poisoned, _ = trade_place(account_id=unknown, beans=100)
        for _ in range(5):
            trade_place(account_id=known, beans=100)
        self.start_worker()
        self.start_beat()
        self.wait_for(lambda: bool(dead_letters()), timeout=60, what="the dead letter")
        self.wait_for(
            lambda: Trade.objects.filter(status=Trade.Status.DEDUCTED).count() == 5,
            timeout=60,
            what="the messages behind it to keep flowing",
        )
        (letter,) = dead_letters()
        self.assertEqual(letter.reason, DeadLetter.Reason.HANDLER_FAILED)
        self.assertIn("AccountNotFound", letter.detail)

        Account(pk=unknown, owner="late", balance=0).save()  # the cause, fixed
        account_credit(account_id=unknown, beans=500)
        self.initial_balances[unknown] = 500
        dead_letter_replay(letter_id=letter.pk, using=settings.BEANS_DATABASE)
        self.wait_drained()
        self.assert_exactly_once(trades=6)
        poisoned.refresh_from_db()
        self.assertEqual(poisoned.status, Trade.Status.DEDUCTED)

        letter = dead_letter_replay(letter_id=letter.pk, using=settings.BEANS_DATABASE)  # again: no effect
        self.assertEqual(letter.replays, 2)
        self.wait_for(
            lambda: (
                MessageLog.objects.using(settings.BEANS_DATABASE)
                .get(handler="beans.deduct", message_id=poisoned.deduction_message_id)
                .redeliveries
                == 1
            ),
            timeout=30,
            what="the second replay to be recognised as a duplicate",
        )
        self.assert_exactly_once(trades=6)

    def test_undecodable_body_and_missing_task_headers_are_recorded_not_dropped(self) -> None:
        (account,) = self.create_accounts(1, balance=1000)
        bad_json_id = str(uuid.uuid4())
        with Connection(current_app.conf.broker_url) as conn:
            producer = conn.Producer()
            producer.publish(
                b"{this is not json",
                exchange="beans",
                routing_key="beans",
                content_type="application/json",
                content_encoding="utf-8",
                headers={"task": "beans.deduct", "id": bad_json_id, "lang": "py"},
                correlation_id=bad_json_id,
                delivery_mode=2,
            )
            producer.publish(
                json.dumps([[{"v": 1}], {}, {}]).encode(),
                exchange="beans",
                routing_key="beans",
                content_type="application/json",
                content_encoding="utf-8",
                headers={"not-a-celery-header": "x"},
                delivery_mode=2,
            )
        for _ in range(3):
            trade_place(account_id=account, beans=100)
        self.start_worker()
        self.start_beat()
        self.wait_drained()
        self.wait_for(lambda: len(dead_letters()) == 2, timeout=60, what="both to be recorded")
        by_body = {letter.body: letter for letter in dead_letters()}
        undecodable = by_body["{this is not json"]
        self.assertEqual(undecodable.reason, DeadLetter.Reason.REJECTED)
        self.assertEqual(str(undecodable.message_id), bad_json_id)
        self.assertEqual((undecodable.headers or {})["task"], "beans.deduct")
        self.assertEqual(len(by_body), 2)
        self.assert_exactly_once(trades=3)
        self.wait_for(lambda: queue_message_counts()["dead-letters"] == 0, timeout=30, what="the drain")
