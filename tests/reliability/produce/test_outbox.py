"""The outbox (``reliability.produce.outbox``): gap-free streams, kept ids, the consumer's envelope."""

from django.db import connection, transaction
from django.test import TestCase, TransactionTestCase

from reliability.envelope import envelope_parse, outbox_envelope
from reliability.exceptions import OutboxUsageError
from reliability.ids import message_id_new
from reliability.models import OutboxMessage, StreamCounter
from reliability.produce.outbox import outbox_enqueue


def _enqueue(stream: str = "tests.stream") -> OutboxMessage:
    return outbox_enqueue(task_name="tests.handler", queue="beans", stream=stream, payload={})


class OutboxEnqueueTests(TestCase):
    def test_rolled_back_enqueue_leaves_no_gap_in_the_stream(self) -> None:
        with self.assertRaisesMessage(RuntimeError, "abort"), transaction.atomic():
            _enqueue()
            raise RuntimeError("abort")
        with transaction.atomic():
            first, second = _enqueue(), _enqueue()

        self.assertEqual([first.seq, second.seq], [1, 2])
        self.assertEqual(StreamCounter.objects.get(stream="tests.stream").last_seq, 2)

    def test_streams_are_numbered_independently(self) -> None:
        with transaction.atomic():
            seqs = [_enqueue("a").seq, _enqueue("b").seq, _enqueue("a").seq]
        self.assertEqual(seqs, [1, 1, 2])

    def test_enqueue_keeps_a_given_message_id(self) -> None:
        message_id = message_id_new()
        with transaction.atomic():
            message = outbox_enqueue(
                task_name="tests.handler", queue="beans", stream="s", payload={}, message_id=message_id
            )
        self.assertEqual(message.message_id, message_id)

    def test_envelope_round_trips_through_the_consumer_parser(self) -> None:
        with transaction.atomic():
            row = outbox_enqueue(task_name="tests.handler", queue="beans", stream="s", payload={"k": 1})
        message = envelope_parse(outbox_envelope(row))
        self.assertEqual((message.message_id, message.stream, message.seq), (row.message_id, "s", 1))
        self.assertEqual(message.payload, {"k": 1})


class OutboxEnqueueOutsideTransactionTests(TransactionTestCase):
    def test_enqueue_outside_a_transaction_is_refused(self) -> None:
        self.assertFalse(connection.in_atomic_block)
        with self.assertRaises(OutboxUsageError):
            _enqueue()
        self.assertEqual(OutboxMessage.objects.count(), 0)
