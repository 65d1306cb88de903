"""Message authenticity (I3): nothing unsigned, forged, tampered or misaddressed is ever applied.

Unit tests of ``reliability.envelope`` (the signature) and of the consumer middleware with the
bean service's real handlers against the real database, then end to end with a
real worker: forged deductions published straight to the queue next to real
trades, and authentic messages re-published to another task's queue.
"""

import json
import time
import uuid
from typing import Any
from unittest import mock

from celery import current_app
from django.test import TestCase, override_settings, tag

from beans.models import Account, LedgerEntry
from beans.services import account_create, deduction_apply, deductions_apply
from reliability.conf import settings
from reliability.consume.task import batch_consume, message_consume
from reliability.envelope import (
    BATCH,
    HEARTBEAT,
    KEY_ID,
    MESSAGE,
    SIGNATURE,
    Unauthentic,
    envelope_sign,
    envelope_verify,
    outbox_envelope,
)
from reliability.models import DeadLetter, MessageLog, OutboxMessage, StreamGap, StreamWatermark
from reliability.produce.heartbeat import stream_heartbeat_send
from reliability.produce.publisher import Publish, publisher
from reliability.produce.relay import outbox_envelopes_pack, stream_highs
from tests.fakes import fake_task
from tests.pipeline import PipelineTestCase
from trades.models import Trade
from trades.services import trade_place, trade_record_outcome

BEANS = settings.BEANS_DATABASE
DEDUCT, OUTCOME = "beans.deduct", "trades.record_outcome"
TASK, OUTCOME_TASK = fake_task(DEDUCT), fake_task(OUTCOME)
OLD = {"old": b"o" * 32}
NEW = {"new": b"n" * 32}


def roundtrip(envelope: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(envelope))


def consume(envelope: Any) -> str:
    return message_consume(task=TASK, envelope=envelope, handler=deduction_apply, using=BEANS, ordered=True)


def consume_as_outcome(envelope: Any) -> str:
    """Deliver ``envelope`` to the trade service's outcome task (the wrong one for a deduction)."""
    return message_consume(
        task=OUTCOME_TASK, envelope=envelope, handler=trade_record_outcome, using="default"
    )


def verify(envelope: dict[str, Any], *, task: str = DEDUCT, kind: str = MESSAGE) -> None:
    envelope_verify(envelope, task=task, kind=kind)


def heartbeats_captured(*, using: str) -> list[Publish]:
    """The heartbeats ``stream_heartbeat_send`` would publish, each as if confirmed."""
    with mock.patch("reliability.produce.heartbeat.publisher") as captured:
        captured.return_value.publish_many.side_effect = lambda items: [None] * len(items)
        sent = stream_heartbeat_send(using=using)
    heartbeats = [item for call in captured.return_value.publish_many.call_args_list for item in call.args[0]]
    assert sent == len(heartbeats)
    return heartbeats


class SignatureTests(TestCase):
    envelope = {
        "v": 1,
        "task": DEDUCT,
        "kind": MESSAGE,
        "message_id": str(uuid.uuid4()),
        "stream": "s",
        "seq": 1,
        "payload": {"beans": 100},
    }

    def test_a_signed_envelope_verifies_after_a_json_round_trip(self) -> None:
        signed = roundtrip(envelope_sign(self.envelope))
        self.assertEqual(signed[KEY_ID], settings.RELIABILITY_SIGNING_KEY_ID)
        verify(signed)

    def test_unsigned_forged_and_tampered_envelopes_are_refused(self) -> None:
        signed = envelope_sign(self.envelope)
        cases = {
            "unsigned": self.envelope,
            "no key id": {k: v for k, v in signed.items() if k != KEY_ID},
            "forged signature": {**signed, SIGNATURE: "0" * 64},
            "payload tampered": {**signed, "payload": {"beans": 1_000_000}},
            "seq tampered": {**signed, "seq": 2},
            "message_id tampered": {**signed, "message_id": str(uuid.uuid4())},
            "task re-addressed": {**signed, "task": OUTCOME},
            "kind changed": {**signed, "kind": HEARTBEAT},
            "address removed": {k: v for k, v in signed.items() if k not in {"task", "kind"}},
            "key id swapped": {**signed, KEY_ID: "other"},
            "signature not text": {**signed, SIGNATURE: 12345},
            "signature not ASCII": {**signed, SIGNATURE: "é" * 64},
            "key id not ASCII": {**signed, KEY_ID: "\ud800"},
        }
        for label, envelope in cases.items():
            with self.subTest(label), self.assertRaises(Unauthentic):
                verify(roundtrip(envelope), task=envelope.get("task", DEDUCT))

    def test_rotation_accepts_the_old_key_until_it_is_dropped(self) -> None:
        with self.settings(RELIABILITY_SIGNING_KEYS=OLD, RELIABILITY_SIGNING_KEY_ID="old"):
            old_signed = envelope_sign(self.envelope)
        with self.settings(RELIABILITY_SIGNING_KEYS={**OLD, **NEW}, RELIABILITY_SIGNING_KEY_ID="new"):
            new_signed = envelope_sign(self.envelope)
            self.assertEqual(new_signed[KEY_ID], "new")
            verify(old_signed)  # in flight from before the switch
            verify(new_signed)
        with self.settings(RELIABILITY_SIGNING_KEYS=NEW, RELIABILITY_SIGNING_KEY_ID="new"):
            verify(new_signed)
            with self.assertRaisesMessage(Unauthentic, "unknown key id 'old'"):
                verify(old_signed)

    def test_an_authentic_envelope_is_refused_by_another_task_or_kind(self) -> None:
        signed = roundtrip(envelope_sign(self.envelope))
        with self.assertRaisesMessage(
            Unauthentic, "signed for task 'beans.deduct', delivered to task 'other'"
        ):
            verify(signed, task="other")
        with self.assertRaisesMessage(Unauthentic, "signed as kind 'message', taken as kind 'heartbeat'"):
            verify(signed, kind=HEARTBEAT)
        addressed_without_kind = envelope_sign({k: v for k, v in self.envelope.items() if k != "kind"})
        with self.assertRaisesMessage(Unauthentic, "signed as kind None"):
            verify(addressed_without_kind)

    def test_an_unaddressed_envelope_is_accepted_only_during_the_transition(self) -> None:
        unaddressed = roundtrip(
            envelope_sign({k: v for k, v in self.envelope.items() if k not in {"task", "kind"}})
        )
        old_heartbeat = envelope_sign({"v": 1, "kind": HEARTBEAT, "stream": "s", "high": 3})
        with override_settings(RELIABILITY_ACCEPT_UNADDRESSED_ENVELOPES=True):
            verify(unaddressed, task="any.task")  # signed before envelopes named their task
            verify(old_heartbeat, kind=HEARTBEAT)
            with self.assertRaisesMessage(Unauthentic, "signed as kind 'heartbeat', taken as kind 'message'"):
                verify(old_heartbeat)
        with override_settings(RELIABILITY_ACCEPT_UNADDRESSED_ENVELOPES=False):
            for envelope, kind in ((unaddressed, MESSAGE), (old_heartbeat, HEARTBEAT)):
                with self.subTest(kind), self.assertRaisesMessage(Unauthentic, "unaddressed envelope"):
                    verify(envelope, kind=kind)
            verify(roundtrip(envelope_sign(self.envelope)))  # an addressed one still verifies


class UnauthenticConsumeTests(TestCase):
    databases = "__all__"

    def setUp(self) -> None:
        self.account = account_create(owner="victim", balance=1000).pk
        trade, _ = trade_place(account_id=self.account, beans=100)
        self.row = OutboxMessage.objects.get(message_id=trade.deduction_message_id)

    def assert_nothing_applied(self) -> None:
        self.assertEqual(Account.objects.get(pk=self.account).balance, 1000)
        self.assertFalse(LedgerEntry.objects.filter(kind=LedgerEntry.Kind.DEDUCTION).exists())
        self.assertFalse(MessageLog.objects.using(BEANS).exists(), "not even a message-log row")
        self.assertFalse(
            StreamWatermark.objects.using(BEANS).exclude(max_seen=0).exists(),
            "its stream position is not recorded: the forger chose it",
        )

    def test_a_tampered_deduction_is_dead_lettered_with_the_reason_and_applies_nothing(self) -> None:
        genuine = roundtrip(outbox_envelope(self.row))
        cases = {
            "tampered amount": {**genuine, "payload": {**genuine["payload"], "beans": 900}},
            "unsigned forgery": {k: v for k, v in genuine.items() if k not in {KEY_ID, SIGNATURE}},
            "signed with a key we do not have": envelope_sign({**genuine, "message_id": str(uuid.uuid4())})
            | {KEY_ID: "attacker"},
        }
        for label, envelope in cases.items():
            with self.subTest(label), self.assertLogs("reliability", level="ERROR"):
                self.assertEqual(consume(roundtrip(envelope)), "dead-lettered")
        letters = DeadLetter.objects.using(BEANS).order_by("id")
        self.assertEqual([letter.reason for letter in letters], [DeadLetter.Reason.UNAUTHENTIC] * 3)
        self.assertTrue(all(letter.message_id is None and letter.seq is None for letter in letters))
        self.assertIn("forged or tampered", letters[0].detail)
        self.assertIn("unsigned", letters[1].detail)
        self.assert_nothing_applied()
        self.assertEqual(consume(genuine), "deducted", "the genuine message still applies")
        self.assertEqual(Account.objects.get(pk=self.account).balance, 900)

    def test_a_forged_heartbeat_is_dead_lettered(self) -> None:
        forged = {"v": 1, "kind": "heartbeat", "stream": self.row.stream, "high": 10**6}
        with self.assertLogs("reliability", level="ERROR"):
            self.assertEqual(consume(forged), "dead-lettered")
        self.assertFalse(StreamWatermark.objects.using(BEANS).filter(producer_high__gt=0).exists())
        self.assertEqual(
            consume(envelope_sign(forged)), "heartbeat", "a signed one is taken (it names the real high)"
        )

    def test_a_forged_message_inside_a_batch_is_dead_lettered_and_the_others_apply(self) -> None:
        rows = [self.row]
        for _ in range(3):
            trade, _ = trade_place(account_id=self.account, beans=100)
            rows.append(OutboxMessage.objects.get(message_id=trade.deduction_message_id))
        ((publish, _),) = outbox_envelopes_pack(rows, highs=stream_highs(streams={self.row.stream}))
        batch = roundtrip(publish.envelope)
        batch["messages"][2]["payload"]["beans"] = 1  # tampered in flight
        with self.assertLogs("reliability", level="ERROR"):
            outcome = batch_consume(
                task=TASK,
                envelope=batch,
                handler=deduction_apply,
                batch_handler=deductions_apply,
                using=BEANS,
                ordered=True,
            )
        self.assertIn("one by one", outcome)
        self.assertEqual(Account.objects.get(pk=self.account).balance, 1000 - 2 * 100, "seq 1 and 2 only")
        (letter,) = DeadLetter.objects.using(BEANS).all()
        self.assertEqual(letter.reason, DeadLetter.Reason.UNAUTHENTIC)
        # Seq 3 never arrived authentically: seq 4 waits (parked) until a genuine copy comes.
        self.assertEqual(
            consume(roundtrip(outbox_envelope(rows[2]))), "deducted", "the genuine copy, e.g. republished"
        )
        self.assertEqual(Account.objects.get(pk=self.account).balance, 600)


class MisaddressedConsumeTests(TestCase):
    """An authentic envelope taken by another task, or as another kind, is refused as unauthentic."""

    databases = "__all__"

    def setUp(self) -> None:
        self.account = account_create(owner="payer", balance=1000).pk
        trade, _ = trade_place(account_id=self.account, beans=100)
        self.trade = trade
        self.row = OutboxMessage.objects.get(message_id=trade.deduction_message_id)

    def assert_no_trace_for(self, handler: str) -> None:
        """No message-log row, no stream position, no gap: nothing the reconciler could chase."""
        for alias in {"default", BEANS}:
            with self.subTest(handler=handler, database=alias):
                self.assertFalse(MessageLog.objects.using(alias).filter(handler=handler).exists())
                self.assertFalse(StreamWatermark.objects.using(alias).filter(handler=handler).exists())
                self.assertFalse(StreamGap.objects.using(alias).exists())

    def unauthentic_letters(self, handler: str) -> list[DeadLetter]:
        using = BEANS if handler == DEDUCT else "default"
        return list(
            DeadLetter.objects.using(using)
            .filter(handler=handler, reason=DeadLetter.Reason.UNAUTHENTIC)
            .order_by("id")
        )

    def test_a_deduction_delivered_to_the_outcome_task_is_unauthentic_and_leaves_no_position(self) -> None:
        genuine = roundtrip(outbox_envelope(self.row))
        self.assertEqual((genuine["task"], genuine["kind"]), (DEDUCT, MESSAGE), "the producer addresses it")
        with self.assertLogs("reliability", level="ERROR"):
            self.assertEqual(consume_as_outcome(genuine), "dead-lettered")
        (letter,) = self.unauthentic_letters(OUTCOME)
        self.assertIn(
            "signed for task 'beans.deduct', delivered to task 'trades.record_outcome'", letter.detail
        )
        self.assertEqual((letter.message_id, letter.stream, letter.seq), (None, "", None))
        self.assert_no_trace_for(OUTCOME)
        self.assertEqual(consume(genuine), "deducted", "the real message still applies at its own task")
        self.assertEqual(Account.objects.get(pk=self.account).balance, 900)

    def test_a_heartbeat_delivered_to_another_task_is_unauthentic_and_leaves_no_position(self) -> None:
        (sent,) = heartbeats_captured(using="default")
        heartbeat = roundtrip(sent.envelope)
        self.assertEqual((sent.task_name, heartbeat["task"], heartbeat["kind"]), (DEDUCT, DEDUCT, HEARTBEAT))
        with self.assertLogs("reliability", level="ERROR"):
            self.assertEqual(consume_as_outcome(heartbeat), "dead-lettered")
        (letter,) = self.unauthentic_letters(OUTCOME)
        self.assertIn(
            "signed for task 'beans.deduct', delivered to task 'trades.record_outcome'", letter.detail
        )
        self.assert_no_trace_for(OUTCOME)
        self.assertEqual(consume(heartbeat), "heartbeat", "its own task takes it")
        watermark = StreamWatermark.objects.using(BEANS).get(handler=DEDUCT, stream=self.row.stream)
        self.assertEqual(watermark.producer_high, 1)

    def test_an_envelope_of_another_kind_is_unauthentic_on_the_message_path(self) -> None:
        genuine = roundtrip(outbox_envelope(self.row))
        unsigned = {k: v for k, v in genuine.items() if k not in {KEY_ID, SIGNATURE}}
        with self.assertLogs("reliability", level="ERROR"):
            self.assertEqual(
                consume(roundtrip(envelope_sign({**unsigned, "kind": "command"}))), "dead-lettered"
            )
        (letter,) = self.unauthentic_letters(DEDUCT)
        self.assertIn("signed as kind 'command', taken as kind 'message'", letter.detail)
        self.assert_no_trace_for(DEDUCT)
        self.assertEqual(Account.objects.get(pk=self.account).balance, 1000)

    @override_settings(RELIABILITY_ACCEPT_UNADDRESSED_ENVELOPES=True)
    def test_an_unaddressed_envelope_applies_during_the_transition(self) -> None:
        genuine = roundtrip(outbox_envelope(self.row))
        old = envelope_sign(
            {k: v for k, v in genuine.items() if k not in {KEY_ID, SIGNATURE, "task", "kind"}}
        )
        self.assertEqual(consume(roundtrip(old)), "deducted", "signed by a producer from before the upgrade")
        self.assertEqual(Account.objects.get(pk=self.account).balance, 900)

    @override_settings(RELIABILITY_ACCEPT_UNADDRESSED_ENVELOPES=False)
    def test_an_unaddressed_envelope_is_unauthentic_once_the_transition_is_over(self) -> None:
        genuine = roundtrip(outbox_envelope(self.row))
        old = envelope_sign(
            {k: v for k, v in genuine.items() if k not in {KEY_ID, SIGNATURE, "task", "kind"}}
        )
        old_heartbeat = envelope_sign({"v": 1, "kind": HEARTBEAT, "stream": self.row.stream, "high": 5})
        with self.assertLogs("reliability", level="ERROR"):
            self.assertEqual(consume(roundtrip(old)), "dead-lettered")
            self.assertEqual(consume(roundtrip(old_heartbeat)), "dead-lettered")
        letters = self.unauthentic_letters(DEDUCT)
        self.assertEqual(len(letters), 2)
        self.assertTrue(all("unaddressed envelope" in letter.detail for letter in letters))
        self.assert_no_trace_for(DEDUCT)
        self.assertEqual(consume(genuine), "deducted", "an addressed one applies")

    def test_a_batch_with_a_misaddressed_message_and_a_heartbeat_applies_only_its_own(self) -> None:
        self.assertEqual(consume(roundtrip(outbox_envelope(self.row))), "deducted")
        outcome_row = OutboxMessage.objects.get(task_name=OUTCOME)
        rows = [self.row]
        for _ in range(3):
            trade, _ = trade_place(account_id=self.account, beans=100)
            rows.append(OutboxMessage.objects.get(message_id=trade.deduction_message_id))
        ((publish, _),) = outbox_envelopes_pack(rows[1:], highs=stream_highs(streams={self.row.stream}))
        batch = roundtrip(publish.envelope)
        self.assertEqual(batch["kind"], BATCH)
        misaddressed = roundtrip(outbox_envelope(outcome_row))  # authentic, for trades.record_outcome
        # Authentic and addressed to this task, but a heartbeat has no place in a batch: had it
        # been taken, it would claim seqs up to 50 exist (a lost tail the reconciler would chase).
        heartbeat = envelope_sign(
            {"v": 1, "task": DEDUCT, "kind": HEARTBEAT, "stream": self.row.stream, "high": 50}
        )
        batch["messages"][1:1] = [misaddressed, roundtrip(heartbeat)]
        with self.assertLogs("reliability", level="ERROR"):
            outcome = batch_consume(
                task=TASK,
                envelope=batch,
                handler=deduction_apply,
                batch_handler=deductions_apply,
                using=BEANS,
                ordered=True,
            )
        self.assertIn("one by one", outcome)
        self.assertEqual(Account.objects.get(pk=self.account).balance, 600, "its three own deductions")
        details = [letter.detail for letter in self.unauthentic_letters(DEDUCT)]
        self.assertEqual(len(details), 2, details)
        self.assertIn("signed for task 'trades.record_outcome', delivered to task 'beans.deduct'", details[0])
        self.assertIn("signed as kind 'heartbeat', taken as kind 'message'", details[1])
        self.assertEqual(
            list(
                StreamWatermark.objects.using(BEANS).filter(handler=DEDUCT).values_list("stream", flat=True)
            ),
            [self.row.stream],
            "no position on the outcome message's stream",
        )
        watermark = StreamWatermark.objects.using(BEANS).get(handler=DEDUCT)
        self.assertEqual((watermark.watermark, watermark.producer_high, watermark.gaps_open), (4, 4, 0))
        self.assertFalse(MessageLog.objects.using(BEANS).filter(message_id=outcome_row.message_id).exists())
        self.assertEqual(consume_as_outcome(misaddressed), Trade.Status.DEDUCTED, "applies at its own task")
        self.trade.refresh_from_db()
        self.assertEqual(self.trade.status, Trade.Status.DEDUCTED)


@tag("integration")
class ForgedMessagesIntegrationTests(PipelineTestCase):
    @override_settings(RELIABILITY_RELAY_FAST_PATH=True)
    def test_forged_deductions_published_to_the_queue_never_touch_a_balance(self) -> None:
        accounts = self.create_accounts(4, balance=10_000)
        for n in range(40):
            trade_place(account_id=accounts[n % 4], beans=10)
        genuine = roundtrip(
            outbox_envelope(OutboxMessage.objects.filter(task_name="beans.deduct").earliest("id"))
        )
        forgeries = [
            {**genuine, "message_id": str(uuid.uuid4()), "payload": {**genuine["payload"], "beans": 5000}},
            {k: v for k, v in genuine.items() if k != SIGNATURE} | {"message_id": str(uuid.uuid4())},
            {**genuine, "payload": {**genuine["payload"], "beans": 9999}},  # same id, tampered
        ]
        for forged in forgeries:
            current_app.send_task("beans.deduct", args=[forged], task_id=str(uuid.uuid4()), queue="beans")
        self.start_worker()
        self.start_beat()
        self.wait_drained(timeout=120)
        self.wait_for(
            lambda: DeadLetter.objects.using(BEANS).filter(reason=DeadLetter.Reason.UNAUTHENTIC).count() == 3,
            timeout=60,
            what="the three forgeries to be dead-lettered",
        )
        self.assert_exactly_once(trades=40)
        self.assert_streams_contiguous()
        self.assertEqual(
            DeadLetter.objects.using(BEANS).exclude(reason=DeadLetter.Reason.UNAUTHENTIC).count(), 0
        )


@tag("integration")
class MisaddressedMessagesIntegrationTests(PipelineTestCase):
    def unauthentic(self, handler: str) -> list[DeadLetter]:
        using = BEANS if handler == DEDUCT else "default"
        return list(
            DeadLetter.objects.using(using).filter(handler=handler, reason=DeadLetter.Reason.UNAUTHENTIC)
        )

    def test_authentic_messages_republished_to_the_other_task_make_no_gap_and_no_escalation(self) -> None:
        accounts = self.create_accounts(2, balance=10_000)
        for n in range(20):
            trade_place(account_id=accounts[n % 2], beans=10)
        row = OutboxMessage.objects.filter(task_name=DEDUCT).latest("seq")  # a late seq: many phantom gaps
        heartbeats = heartbeats_captured(using="default")
        self.assertTrue(heartbeats)
        self.assertTrue(all(sent.task_name == DEDUCT for sent in heartbeats))
        # A routing mistake: the deduction and the heartbeats, authentic, go to the outcome task.
        misrouted = [(str(row.message_id), outbox_envelope(row))]
        misrouted += [(sent.task_id, sent.envelope) for sent in heartbeats]
        for message_id, envelope in misrouted:
            publisher().publish(task_name=OUTCOME, queue="trades", message_id=message_id, envelope=envelope)
        self.start_worker()
        self.start_beat()
        self.wait_drained(timeout=120)
        self.wait_for(
            lambda: len(self.unauthentic(OUTCOME)) == len(misrouted),
            timeout=60,
            what="each misaddressed message to be dead-lettered as unauthentic",
        )
        # And the other way: an outcome stream's heartbeat, authentic, to the deduction task.
        outcome_heartbeats = [sent for sent in heartbeats_captured(using=BEANS) if sent.task_name == OUTCOME]
        self.assertTrue(outcome_heartbeats)
        for sent in outcome_heartbeats:
            publisher().publish(
                task_name=DEDUCT, queue=row.queue, message_id=sent.task_id, envelope=sent.envelope
            )
        self.wait_for(
            lambda: len(self.unauthentic(DEDUCT)) == len(outcome_heartbeats),
            timeout=60,
            what="the outcome heartbeats to be dead-lettered as unauthentic by the deduction task",
        )
        time.sleep(5)  # several reconciler and heartbeat periods (1 s each here)
        self.assert_exactly_once(trades=20)
        self.assert_streams_contiguous()
        self.assertEqual(
            LedgerEntry.objects.filter(message_id=row.message_id).count(), 1, "the real deduction, once"
        )
        for alias in {"default", BEANS}:
            with self.subTest(database=alias):
                # A gap on a handler's own stream is normal (two processes finish out of seq order)
                # and heals when its message lands; a phantom gap is on another handler's stream,
                # or never heals.
                gaps = StreamGap.objects.using(alias)
                phantom = [
                    (handler, stream, seq)
                    for handler, stream, seq in gaps.values_list("handler", "stream", "seq")
                    if (handler == OUTCOME) != stream.startswith("outcomes.")
                ]
                self.assertEqual(phantom, [], "no gap on another handler's stream")
                unhealed = gaps.exclude(status=StreamGap.Status.HEALED)
                self.assertEqual(list(unhealed.values_list("handler", "stream", "seq", "status")), [])
                others = DeadLetter.objects.using(alias).exclude(reason=DeadLetter.Reason.UNAUTHENTIC)
                self.assertEqual(list(others.values_list("handler", "reason", "detail")), [])
        positions = {
            (handler, stream)
            for alias in {"default", BEANS}
            for handler, stream in StreamWatermark.objects.using(alias).values_list("handler", "stream")
        }
        wrong = {(h, s) for h, s in positions if (h == OUTCOME) != s.startswith("outcomes.")}
        self.assertEqual(wrong, set(), "no stream position recorded for the wrong handler")
        details = [letter.detail for letter in self.unauthentic(OUTCOME) + self.unauthentic(DEDUCT)]
        self.assertTrue(all("signed for task" in detail for detail in details), details)
