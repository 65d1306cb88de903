"""The consumer middleware, called directly with JSON-round-tripped envelopes.

``message_consume`` is what every exactly-once task runs; here it gets the tests'
stand-in for the bound Celery task (``tests.fakes.fake_task``) and a recording handler, so each path is checked without a broker or a worker.
"""

import json
from typing import Any
from unittest import mock

from celery.exceptions import Reject
from django.db import OperationalError, transaction
from django.test import TestCase

from reliability.consume.task import exactly_once_task, message_consume
from reliability.envelope import Message, envelope_sign, outbox_envelope
from reliability.exceptions import PoisonMessage
from reliability.models import DeadLetter, MessageLog, OutboxMessage, ParkedMessage
from reliability.produce.outbox import outbox_enqueue
from tests.fakes import fake_task

HANDLER_NAME = "tests.handler"


class RecordingHandler:
    def __init__(self, outcome: str | None = "done", error: Exception | None = None) -> None:
        self.outcome, self.error = outcome, error
        self.calls: list[Message] = []

    def __call__(self, message: Message) -> str | None:
        self.calls.append(message)
        if self.error is not None:
            # A write before the failure, to show the rollback takes it away too.
            outbox_enqueue(task_name="tests.effect", queue="beans", stream="effects", payload={})
            raise self.error
        return self.outcome


def _consume(envelope: Any, handler: RecordingHandler, task: Any = None) -> str:
    return message_consume(
        task=task or fake_task(HANDLER_NAME), envelope=envelope, handler=handler, using="default"
    )


class MessageConsumeTests(TestCase):
    def setUp(self) -> None:
        with transaction.atomic():
            self.row = outbox_enqueue(
                task_name=HANDLER_NAME, queue="beans", stream="deductions.3", payload={"trade_id": 1}
            )
        self.envelope = json.loads(json.dumps(outbox_envelope(self.row)))

    def test_first_delivery_applies_the_handler_once(self) -> None:
        handler = RecordingHandler()

        self.assertEqual(_consume(self.envelope, handler), "done")

        self.assertEqual(len(handler.calls), 1)
        message = handler.calls[0]
        self.assertEqual(message.message_id, self.row.message_id)
        self.assertEqual((message.stream, message.seq), ("deductions.3", self.row.seq))
        self.assertEqual(message.payload, {"trade_id": 1})
        log = MessageLog.objects.get()
        self.assertEqual((log.handler, log.message_id), (HANDLER_NAME, self.row.message_id))
        self.assertEqual((log.stream, log.seq, log.outcome, log.redeliveries), ("deductions.3", 1, "done", 0))

    def test_handler_without_outcome_is_recorded_as_applied(self) -> None:
        self.assertEqual(_consume(self.envelope, RecordingHandler(outcome=None)), "applied")
        self.assertEqual(MessageLog.objects.get().outcome, "applied")

    def test_duplicate_delivery_is_skipped_and_counted(self) -> None:
        handler = RecordingHandler()
        _consume(self.envelope, handler)

        self.assertEqual(_consume(self.envelope, handler), "duplicate")
        self.assertEqual(_consume(json.loads(json.dumps(self.envelope)), handler), "duplicate")

        self.assertEqual(len(handler.calls), 1)
        log = MessageLog.objects.get()
        self.assertEqual((log.outcome, log.redeliveries), ("done", 2))

    def test_same_message_is_applied_once_per_handler(self) -> None:
        first, second = RecordingHandler(), RecordingHandler()

        def addressed_to(task: str) -> dict[str, Any]:
            return envelope_sign({**self.envelope, "task": task})

        _consume(addressed_to("tests.first"), first, fake_task("tests.first"))
        _consume(addressed_to("tests.second"), second, fake_task("tests.second"))

        self.assertEqual((len(first.calls), len(second.calls)), (1, 1))
        self.assertEqual(MessageLog.objects.filter(message_id=self.row.message_id).count(), 2)

    def test_invalid_envelope_is_dead_lettered_without_calling_the_handler(self) -> None:
        def without(key: str) -> dict[str, Any]:
            return {k: v for k, v in self.envelope.items() if k != key}

        cases = {
            "not a dict": ["not", "an", "envelope"],
            "a string": "hello",
            "missing message_id": without("message_id"),
            "malformed message_id": {**self.envelope, "message_id": "not-a-uuid"},
            "missing stream": without("stream"),
            "seq 0": {**self.envelope, "seq": 0},
            "seq as text": {**self.envelope, "seq": "1"},
            "seq as bool": {**self.envelope, "seq": True},
            "payload not a dict": {**self.envelope, "payload": [1, 2]},
            "wrong version": {**self.envelope, "v": 2},
            "missing version": without("v"),
        }
        for label, envelope in cases.items():
            with self.subTest(label):
                handler = RecordingHandler()
                with self.assertLogs("reliability", level="ERROR"):
                    outcome = _consume(json.loads(json.dumps(envelope)), handler)

                self.assertEqual(outcome, "dead-lettered")
                self.assertEqual(handler.calls, [])
                letter = DeadLetter.objects.latest("id")
                self.assertEqual(
                    (letter.reason, letter.handler, letter.status),
                    (DeadLetter.Reason.INVALID_ENVELOPE, HANDLER_NAME, DeadLetter.Status.OPEN),
                )
                self.assertEqual(letter.envelope, envelope)
        self.assertEqual(DeadLetter.objects.count(), len(cases))
        self.assertFalse(MessageLog.objects.exists())

    def test_poison_message_is_dead_lettered_at_once_and_its_effects_rolled_back(self) -> None:
        handler = RecordingHandler(error=PoisonMessage("bad payload"))
        outbox_rows = OutboxMessage.objects.count()

        with self.assertLogs("reliability", level="ERROR"):
            outcome = _consume(self.envelope, handler)

        self.assertEqual(outcome, "dead-lettered")
        self.assertEqual(len(handler.calls), 1)
        letter = DeadLetter.objects.get()
        self.assertEqual(letter.reason, DeadLetter.Reason.HANDLER_FAILED)
        self.assertEqual(letter.message_id, self.row.message_id)
        self.assertIn("PoisonMessage: bad payload", letter.detail)
        self.assertEqual(letter.envelope, self.envelope)
        self.assertFalse(MessageLog.objects.exists())
        self.assertEqual(OutboxMessage.objects.count(), outbox_rows)

    def test_dead_lettered_message_can_be_applied_once_fixed(self) -> None:
        with self.assertLogs("reliability", level="ERROR"):
            _consume(self.envelope, RecordingHandler(error=PoisonMessage("bug")))

        fixed = RecordingHandler()
        self.assertEqual(_consume(self.envelope, fixed), "done")
        self.assertEqual(len(fixed.calls), 1)

    def test_unexpected_handler_error_requeues_for_the_delivery_limit_to_bound(self) -> None:
        handler = RecordingHandler(error=ValueError("bug"))

        with (
            mock.patch("reliability.consume.ack.time.sleep") as sleep,
            self.assertLogs("reliability", level="ERROR"),
            self.assertRaises(Reject) as raised,
        ):
            _consume(self.envelope, handler)

        self.assertTrue(raised.exception.requeue)
        sleep.assert_called_once()
        self.assertFalse(DeadLetter.objects.exists(), "the broker dead-letters it after the delivery limit")
        self.assertFalse(MessageLog.objects.exists())

    def test_transient_database_error_requeues_without_dead_letter(self) -> None:
        handler = RecordingHandler(error=OperationalError("connection lost"))

        with (
            mock.patch("reliability.consume.ack.time.sleep") as sleep,
            self.assertLogs("reliability", level="WARNING"),
            self.assertRaises(Reject) as raised,
        ):
            _consume(self.envelope, handler)

        self.assertTrue(raised.exception.requeue)
        sleep.assert_called_once()
        self.assertFalse(DeadLetter.objects.exists())
        self.assertFalse(MessageLog.objects.exists())


class OrderedConsumeTests(TestCase):
    """An ordered handler applies a stream in sequence order, parking what overtakes."""

    def setUp(self) -> None:
        with transaction.atomic():
            rows = [
                outbox_enqueue(task_name="tests.ordered", queue="beans", stream="ordered", payload={"n": n})
                for n in range(1, 4)
            ]
        self.envelopes = [json.loads(json.dumps(outbox_envelope(row))) for row in rows]
        self.applied: list[int] = []

    def handler(self, message: Message) -> str:
        if message.payload.get("poison"):
            raise PoisonMessage("cannot apply")
        self.applied.append(message.seq)
        return "done"

    def consume(self, envelope: Any) -> str:
        return message_consume(
            task=fake_task("tests.ordered"),
            envelope=envelope,
            handler=self.handler,
            using="default",
            ordered=True,
        )

    def test_a_message_that_overtakes_is_parked_then_applied_in_order(self) -> None:
        self.assertEqual(self.consume(self.envelopes[2]), "parked")
        self.assertEqual(self.consume(self.envelopes[1]), "parked")
        self.assertEqual(self.applied, [])
        self.assertEqual(self.consume(self.envelopes[0]), "done")
        self.assertEqual(self.applied, [1, 2, 3])
        self.assertFalse(ParkedMessage.objects.exists())
        self.assertEqual(
            self.consume(self.envelopes[2]), "duplicate", "a parked message's redelivery is a duplicate"
        )

    def test_a_dead_lettered_predecessor_releases_what_waits_behind_it(self) -> None:
        self.consume(self.envelopes[1])
        # Authentic (signed by the producer), but a payload the handler refuses for good.
        poisoned = envelope_sign({**self.envelopes[0], "payload": {"poison": True}})
        with self.assertLogs("reliability", level="ERROR"):
            self.assertEqual(self.consume(poisoned), "dead-lettered")
        self.assertEqual(self.applied, [2])
        self.assertEqual(self.consume(self.envelopes[2]), "done")
        self.assertEqual(self.applied, [2, 3])


# The task a worker runs: its wrapper turns a transient error from outside the effect's
# transaction into a requeue, instead of a failure the broker would dead-letter.
@exactly_once_task(name="tests.transient", queue="beans")
def transient_task(message: Message) -> str:
    return "applied"


class TransientErrorOutsideTheEffectTests(TestCase):
    """A database hiccup on the paths around the effect requeues the delivery, like one inside it."""

    def assert_requeued(self, envelope: Any) -> None:
        with (
            mock.patch("reliability.consume.ack.time.sleep"),
            self.assertLogs("reliability", level="WARNING"),
            self.assertRaises(Reject) as raised,
        ):
            transient_task(envelope)
        self.assertTrue(raised.exception.requeue, "requeued, not rejected to the dead-letter exchange")

    def test_a_heartbeat_meeting_a_lost_connection_is_requeued(self) -> None:
        heartbeat = envelope_sign({"v": 1, "kind": "heartbeat", "stream": "deductions.3", "high": 4})
        with mock.patch(
            "reliability.consume.heartbeat.stream_high_record",
            side_effect=OperationalError("terminating connection"),
        ):
            self.assert_requeued(heartbeat)

    def test_a_dead_letter_that_cannot_be_recorded_yet_is_requeued(self) -> None:
        with mock.patch(
            "reliability.consume.dead_letter.dead_letter_record",
            side_effect=OperationalError("server closed"),
        ):
            self.assert_requeued({"v": 1, "message_id": "not a uuid"})
        self.assertFalse(DeadLetter.objects.exists())

    def test_a_lasting_failure_outside_the_effect_still_fails_the_task(self) -> None:
        with (
            mock.patch(
                "reliability.consume.dead_letter.dead_letter_record", side_effect=RuntimeError("a bug")
            ),
            self.assertRaises(RuntimeError),
        ):
            transient_task({"v": 1, "message_id": "not a uuid"})
