"""The batched consumer path, called directly with packed, JSON-round-tripped envelopes.

``batch_consume`` is what an exactly-once task runs for a batch envelope. These
tests give it the bean service's real handlers and a stand-in for the bound task,
against the real database: one transaction in the common case, and message by
message, with nothing lost, doubled or blocked, in every other.
"""

import json
from typing import Any
from unittest import mock

from celery.exceptions import Reject
from django.conf import settings
from django.db import OperationalError
from django.test import TestCase

from beans.models import Account, LedgerEntry
from beans.services import account_create, deduction_apply, deductions_apply
from reliability.consume.task import batch_consume
from reliability.envelope import BATCH, outbox_envelope
from reliability.models import (
    DeadLetter,
    MessageLog,
    OutboxMessage,
    ParkedMessage,
    StreamGap,
    StreamWatermark,
)
from reliability.ops.dead_letters import dead_letter_from_broker
from reliability.produce.relay import outbox_envelopes_pack, stream_highs
from reliability.selectors import pipeline_counters
from tests.fakes import fake_task
from trades.models import Trade
from trades.services import trade_place

BEANS = settings.BEANS_DATABASE
TASK = fake_task("beans.deduct")


def packed(rows: list[OutboxMessage]) -> dict[str, Any]:
    """The batch envelope the relay would publish for ``rows``, as the consumer decodes it."""
    ((publish, _),) = outbox_envelopes_pack(rows, highs=stream_highs(streams={row.stream for row in rows}))
    envelope = json.loads(json.dumps(publish.envelope))
    assert envelope["kind"] == BATCH
    return envelope


def consume(envelope: dict[str, Any]) -> str:
    return batch_consume(
        task=TASK,
        envelope=envelope,
        handler=deduction_apply,
        batch_handler=deductions_apply,
        using=BEANS,
        ordered=True,
    )


def deductions() -> int:
    return LedgerEntry.objects.filter(kind=LedgerEntry.Kind.DEDUCTION).count()


class BatchConsumeTests(TestCase):
    databases = "__all__"

    def place(self, accounts: list[int], count: int, beans: int = 10) -> list[OutboxMessage]:
        trades = [trade_place(account_id=accounts[n % len(accounts)], beans=beans)[0] for n in range(count)]
        ids = [trade.deduction_message_id for trade in trades]
        return list(OutboxMessage.objects.filter(message_id__in=ids).order_by("id"))

    def test_a_batch_is_applied_in_one_transaction(self) -> None:
        accounts = [account_create(owner=f"a{n}", balance=1000).pk for n in range(3)]
        rows = self.place(accounts, 12)
        self.assertEqual(consume(packed(rows)), "batch of 12 applied")
        self.assertEqual(deductions(), 12)
        for account in Account.objects.filter(pk__in=accounts):
            self.assertEqual(account.balance, 1000 - 4 * 10)
        log = MessageLog.objects.using(BEANS).filter(handler="beans.deduct")
        self.assertEqual(log.count(), 12)
        self.assertEqual(set(log.values_list("outcome", flat=True)), {"deducted"})
        self.assertEqual(len(set(log.values_list("applied_at", flat=True))), 1, "one statement, one time")
        for watermark in StreamWatermark.objects.using(BEANS).filter(handler="beans.deduct"):
            produced = max(row.seq for row in rows if row.stream == watermark.stream)
            self.assertEqual((watermark.watermark, watermark.max_seen), (produced, produced))
        outcomes = OutboxMessage.objects.using(BEANS).filter(task_name="trades.record_outcome")
        self.assertEqual(outcomes.count(), 12, "one outcome message per deduction, same transaction")
        for stream in set(outcomes.values_list("stream", flat=True)):
            seqs = sorted(outcomes.filter(stream=stream).values_list("seq", flat=True))
            self.assertEqual(seqs, list(range(1, len(seqs) + 1)), "outcome seqs are gap-free")

    def test_deductions_in_one_batch_see_each_others_balance(self) -> None:
        account = account_create(owner="a", balance=250).pk
        rows = self.place([account], 3, beans=100)
        consume(packed(rows))
        self.assertEqual(Account.objects.get(pk=account).balance, 50)
        self.assertEqual(deductions(), 2)
        outcomes = dict(
            MessageLog.objects.using(BEANS).values_list("seq", "outcome").filter(handler="beans.deduct")
        )
        self.assertEqual(outcomes, {1: "deducted", 2: "deducted", 3: "rejected"})

    def test_a_redelivered_batch_has_no_effect(self) -> None:
        account = account_create(owner="a", balance=1000).pk
        envelope = packed(self.place([account], 5))
        consume(envelope)
        self.assertEqual(consume(envelope), "batch of 5 one by one: duplicate")
        self.assertEqual(deductions(), 5)
        self.assertEqual(Account.objects.get(pk=account).balance, 950)
        self.assertEqual(
            list(MessageLog.objects.using(BEANS).values_list("redeliveries", flat=True)), [1] * 5
        )

    def test_a_message_twice_in_one_batch_is_applied_once(self) -> None:
        account = account_create(owner="a", balance=1000).pk
        envelope = packed(self.place([account], 3))
        envelope["messages"].append(envelope["messages"][0])
        self.assertIn("one by one", consume(envelope))
        self.assertEqual(deductions(), 3)
        self.assertEqual(Account.objects.get(pk=account).balance, 970)
        self.assertEqual(sum(MessageLog.objects.using(BEANS).values_list("redeliveries", flat=True)), 1)

    def test_a_poison_message_is_dead_lettered_and_the_others_are_applied(self) -> None:
        known = account_create(owner="a", balance=1000).pk
        unknown = known + 1000
        rows = self.place([known], 2)
        # A trade for no account, as if the account check had been skipped.
        with mock.patch("trades.services._account_exists_sql", return_value="TRUE"):
            rows += self.place([unknown], 1)
        rows += self.place([known], 2)
        envelope = packed(sorted(rows, key=lambda row: row.pk))
        self.assertIn("one by one", consume(envelope))
        self.assertEqual(deductions(), 4)
        self.assertEqual(Account.objects.get(pk=known).balance, 960)
        (letter,) = DeadLetter.objects.using(BEANS).all()
        self.assertEqual(letter.reason, DeadLetter.Reason.HANDLER_FAILED)
        self.assertIn("does not exist", letter.detail)
        self.assertEqual(
            str(letter.message_id),
            next(m["message_id"] for m in envelope["messages"] if m["payload"]["account_id"] == unknown),
        )

    def test_a_batch_that_overtakes_its_predecessor_is_parked_then_applied_in_order(self) -> None:
        account = account_create(owner="a", balance=1000).pk
        rows = self.place([account], 10)
        first, second = packed(rows[:5]), packed(rows[5:])
        consume(second)
        self.assertEqual(deductions(), 0, "nothing applied before its predecessors")
        self.assertEqual(ParkedMessage.objects.using(BEANS).count(), 5)
        consume(first)
        self.assertFalse(ParkedMessage.objects.using(BEANS).exists())
        seq_of: dict[object, int] = {row.message_id: row.seq for row in rows}
        applied = [
            seq_of[message_id]
            for message_id in LedgerEntry.objects.filter(kind=LedgerEntry.Kind.DEDUCTION)
            .order_by("id")
            .values_list("message_id", flat=True)
        ]
        self.assertEqual(applied, list(range(1, 11)), "applied in sequence order")
        self.assertEqual(Account.objects.get(pk=account).balance, 900)

    def test_only_a_batch_whose_predecessor_may_be_in_flight_waits_for_it(self) -> None:
        account = account_create(owner="a", balance=1000).pk
        rows = self.place([account], 15)
        first, second, third = packed(rows[:5]), packed(rows[5:10]), packed(rows[10:])
        with mock.patch("reliability.consume.batch.time.sleep") as sleep:
            consume(second)  # nothing seen past the watermark: seqs 1-5 may be committing now
        self.assertEqual(len(sleep.call_args_list), 6, "waited, a little longer each time")
        self.assertEqual(ParkedMessage.objects.using(BEANS).count(), 5, "then parked, one by one")
        with mock.patch("reliability.consume.batch.time.sleep") as sleep:
            consume(third)  # the stream has a known gap now: waiting would not close it
        sleep.assert_not_called()
        consume(first)
        self.assertEqual(deductions(), 15)
        self.assertFalse(ParkedMessage.objects.using(BEANS).exists())

    def test_a_transient_database_error_requeues_the_batch_and_applies_nothing(self) -> None:
        account = account_create(owner="a", balance=1000).pk
        envelope = packed(self.place([account], 4))
        with (
            # After the balances and the ledger were written: both must roll back.
            mock.patch("beans.services.outbox_enqueue_many", side_effect=OperationalError("gone")),
            self.settings(RELIABILITY_REQUEUE_PAUSE_MAX_S=0),
            self.assertRaises(Reject),
        ):
            consume(envelope)
        self.assertEqual(deductions(), 0)
        self.assertFalse(MessageLog.objects.using(BEANS).exists(), "rolled back with the effect")
        self.assertEqual(Account.objects.get(pk=account).balance, 1000)
        self.assertEqual(consume(envelope), "batch of 4 applied", "the redelivery applies it")

    def test_a_dead_lettered_batch_is_recorded_one_row_per_message(self) -> None:
        account = account_create(owner="a", balance=1000).pk
        envelope = packed(self.place([account], 3))
        body = json.dumps([[envelope], {}, {}])
        properties = {
            "application_headers": {
                "task": "beans.deduct",
                "x-death": [{"reason": "delivery_limit", "queue": "beans", "count": 20}],
            },
            "correlation_id": "batch-task-id",
        }
        letters = dead_letter_from_broker(body, properties)
        self.assertEqual(
            sorted(str(letter.message_id) for letter in letters),
            sorted(message["message_id"] for message in envelope["messages"]),
        )
        self.assertEqual(sorted(letter.seq for letter in letters), [1, 2, 3])
        self.assertTrue(all(letter.reason == DeadLetter.Reason.DELIVERY_LIMIT for letter in letters))
        self.assertEqual(Trade.objects.filter(status=Trade.Status.PENDING).count(), 3, "nothing applied")


class ExpiredPeriodicTaskTests(TestCase):
    databases = "__all__"
    death = {"x-death": [{"reason": "expired", "queue": "housekeeping", "count": 1}]}

    def test_an_expired_housekeeping_task_is_dropped_and_counted_not_kept(self) -> None:
        # What the broker dead-letters when beat's relay_outbox waited past its ``expires``.
        properties = {
            "application_headers": {"task": "reliability.relay_outbox", "id": "beat-run-1", **self.death},
            "correlation_id": "beat-run-1",
        }
        with self.assertLogs("reliability.ops.dead_letters", level="WARNING") as logged:
            self.assertEqual(dead_letter_from_broker(json.dumps([[], {}, {}]), properties), [])
            self.assertEqual(dead_letter_from_broker(json.dumps([[], {}, {}]), properties), [])
        self.assertIn("reliability.relay_outbox", logged.output[0])
        self.assertIn("beat-run-1", logged.output[0])
        self.assertFalse(DeadLetter.objects.exists(), "not a dead letter: nothing for a human to do")
        self.assertEqual(pipeline_counters(), {"housekeeping_expired_dropped": 2})

    def test_an_expired_message_that_is_not_housekeeping_is_still_a_dead_letter(self) -> None:
        (other,) = dead_letter_from_broker(
            json.dumps([[], {}, {}]), {"application_headers": {"task": "tests.not_periodic", **self.death}}
        )
        self.assertEqual(other.status, DeadLetter.Status.OPEN)
        account = account_create(owner="a", balance=1000).pk
        trade, _ = trade_place(account_id=account, beans=10)
        row = OutboxMessage.objects.get(message_id=trade.deduction_message_id)
        envelope = json.loads(json.dumps(outbox_envelope(row)))
        (message,) = dead_letter_from_broker(
            json.dumps([[envelope], {}, {}]), {"application_headers": {"task": "beans.deduct", **self.death}}
        )
        self.assertEqual(message.status, DeadLetter.Status.OPEN, "an expired message waits for a human")
        self.assertEqual((message.stream, message.seq), (row.stream, row.seq))
        self.assertEqual(pipeline_counters(), {}, "nothing counted as a dropped housekeeping task")


class DeadLetterStreamPositionTests(TestCase):
    """The drain records a stream position only for an authentic message addressed to its task."""

    databases = "__all__"
    death = {"x-death": [{"reason": "rejected", "queue": "trades", "count": 1}]}

    def test_a_message_dead_lettered_under_another_task_name_records_no_position(self) -> None:
        account = account_create(owner="a", balance=1000).pk
        rows = []
        for _ in range(3):
            trade, _ = trade_place(account_id=account, beans=10)
            rows.append(OutboxMessage.objects.get(message_id=trade.deduction_message_id))
        for task in ("trades.record_outcome", "tests.no_such_task"):  # a wrong or an unknown task name
            with self.subTest(task=task):
                envelope = json.loads(json.dumps(outbox_envelope(rows[2])))
                (letter,) = dead_letter_from_broker(
                    json.dumps([[envelope], {}, {}]), {"application_headers": {"task": task, **self.death}}
                )
                self.assertEqual((letter.handler, letter.stream, letter.seq), (task, "", None))
                self.assertEqual(letter.message_id, rows[2].message_id, "kept, to be found and discarded")
        self.assertFalse(StreamWatermark.objects.using(BEANS).exists(), "no position, so no phantom gap")
        self.assertFalse(StreamGap.objects.using(BEANS).exists())
        tampered = json.loads(json.dumps(outbox_envelope(rows[2]))) | {"seq": 7}
        (forged,) = dead_letter_from_broker(
            json.dumps([[tampered], {}, {}]), {"application_headers": {"task": "beans.deduct", **self.death}}
        )
        self.assertEqual((forged.stream, forged.seq), ("", None), "a forged seq is not recorded either")
        self.assertFalse(StreamWatermark.objects.using(BEANS).exists())
        (own,) = dead_letter_from_broker(
            json.dumps([[json.loads(json.dumps(outbox_envelope(rows[2])))], {}, {}]),
            {"application_headers": {"task": "beans.deduct", **self.death}},
        )
        self.assertEqual((own.stream, own.seq), (rows[2].stream, 3), "its own task's position is recorded")
