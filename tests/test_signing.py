"""Message authenticity (I3): nothing unsigned, forged or tampered is ever applied.

Unit tests of ``reliability.signing`` and of the consumer middleware with the
bean service's real handlers against the real database, then one end to end:
forged deductions published straight to the queue, next to real trades, with a
real worker.
"""

import json
import uuid
from types import SimpleNamespace
from typing import Any

from celery import current_app
from django.conf import settings
from django.test import TestCase, override_settings, tag

from beans.models import Account, LedgerEntry
from beans.services import account_create, deduction_apply, deductions_apply
from reliability.consumer import batch_consume, message_consume
from reliability.models import DeadLetter, MessageLog, OutboxMessage, StreamWatermark
from reliability.services import outbox_envelope, outbox_envelopes_pack, stream_highs
from reliability.signing import KEY_ID, SIGNATURE, Unauthentic, envelope_sign, envelope_verify
from trades.services import trade_place

from .pipeline import PipelineTestCase

BEANS = settings.BEANS_DATABASE
TASK = SimpleNamespace(name="beans.deduct", request=SimpleNamespace(retries=0, delivery_info={}))
OLD = {"old": b"o" * 32}
NEW = {"new": b"n" * 32}


def roundtrip(envelope: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(envelope))


def consume(envelope: Any) -> str:
    return message_consume(task=TASK, envelope=envelope, handler=deduction_apply, using=BEANS, ordered=True)


class SignatureTests(TestCase):
    envelope = {"v": 1, "message_id": str(uuid.uuid4()), "stream": "s", "seq": 1, "payload": {"beans": 100}}

    def test_a_signed_envelope_verifies_after_a_json_round_trip(self) -> None:
        signed = roundtrip(envelope_sign(self.envelope))
        self.assertEqual(signed[KEY_ID], settings.RELIABILITY_SIGNING_KEY_ID)
        envelope_verify(signed)

    def test_unsigned_forged_and_tampered_envelopes_are_refused(self) -> None:
        signed = envelope_sign(self.envelope)
        cases = {
            "unsigned": self.envelope,
            "no key id": {k: v for k, v in signed.items() if k != KEY_ID},
            "forged signature": {**signed, SIGNATURE: "0" * 64},
            "payload tampered": {**signed, "payload": {"beans": 1_000_000}},
            "seq tampered": {**signed, "seq": 2},
            "message_id tampered": {**signed, "message_id": str(uuid.uuid4())},
            "key id swapped": {**signed, KEY_ID: "other"},
            "signature not text": {**signed, SIGNATURE: 12345},
            "signature not ASCII": {**signed, SIGNATURE: "é" * 64},
            "key id not ASCII": {**signed, KEY_ID: "\ud800"},
        }
        for label, envelope in cases.items():
            with self.subTest(label), self.assertRaises(Unauthentic):
                envelope_verify(roundtrip(envelope))

    def test_rotation_accepts_the_old_key_until_it_is_dropped(self) -> None:
        with self.settings(RELIABILITY_SIGNING_KEYS=OLD, RELIABILITY_SIGNING_KEY_ID="old"):
            old_signed = envelope_sign(self.envelope)
        with self.settings(RELIABILITY_SIGNING_KEYS={**OLD, **NEW}, RELIABILITY_SIGNING_KEY_ID="new"):
            new_signed = envelope_sign(self.envelope)
            self.assertEqual(new_signed[KEY_ID], "new")
            envelope_verify(old_signed)  # in flight from before the switch
            envelope_verify(new_signed)
        with self.settings(RELIABILITY_SIGNING_KEYS=NEW, RELIABILITY_SIGNING_KEY_ID="new"):
            envelope_verify(new_signed)
            with self.assertRaisesMessage(Unauthentic, "unknown key id 'old'"):
                envelope_verify(old_signed)


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
