"""The outbox (``reliability.produce.outbox``): gap-free streams, kept ids, the consumer's envelope,
streams owned by one consumer, and producers on different streams never waiting for each other."""

import threading
import time

from django.db import OperationalError, connection, transaction
from django.test import TestCase, TransactionTestCase, override_settings

from reliability.envelope import envelope_parse, outbox_envelope
from reliability.exceptions import OutboxUsageError
from reliability.ids import message_id_new
from reliability.models import OutboxMessage, StreamCounter
from reliability.produce.outbox import outbox_enqueue

HANDLER = "tests.handler"


def _enqueue(stream: str = "tests.stream") -> OutboxMessage:
    return outbox_enqueue(task_name=HANDLER, queue="beans", stream=stream, payload={})


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


class SequenceAllocationTests(TransactionTestCase):
    def test_a_stream_belongs_to_one_consumer(self) -> None:
        with transaction.atomic():
            outbox_enqueue(task_name="a.task", queue="beans", stream="owned", payload={})
        with self.assertRaises(OutboxUsageError), transaction.atomic():
            outbox_enqueue(task_name="b.task", queue="beans", stream="owned", payload={})

    @override_settings(RELIABILITY_RELAY_FAST_PATH=False)
    def test_a_counter_from_before_streams_had_owners_is_claimed_by_its_first_user(self) -> None:
        StreamCounter.objects.create(stream="legacy", last_seq=7)  # no task_name, no queue
        with transaction.atomic():
            row = outbox_enqueue(task_name="a.task", queue="beans", stream="legacy", payload={})
        self.assertEqual(row.seq, 8, "the sequence continues")
        counter = StreamCounter.objects.get(stream="legacy")
        self.assertEqual((counter.task_name, counter.queue), ("a.task", "beans"))
        with self.assertRaises(OutboxUsageError), transaction.atomic():
            outbox_enqueue(task_name="b.task", queue="beans", stream="legacy", payload={})

    @override_settings(RELIABILITY_RELAY_FAST_PATH=False)
    def test_producers_on_different_streams_do_not_wait_for_each_other(self) -> None:
        holding, release = threading.Event(), threading.Event()
        timings: dict[str, float] = {}

        def hold_stream_a() -> None:
            with transaction.atomic():
                outbox_enqueue(task_name=HANDLER, queue="beans", stream="a", payload={})
                holding.set()
                release.wait(10)
            connection.close()

        def write(stream: str) -> None:
            started = time.monotonic()
            try:
                with transaction.atomic():
                    connection.cursor().execute("SET LOCAL lock_timeout = '2s'")
                    outbox_enqueue(task_name=HANDLER, queue="beans", stream=stream, payload={})
                timings[stream] = time.monotonic() - started
            except OperationalError:
                pass  # lock timeout: the expected outcome on the held stream
            finally:
                connection.close()

        holder = threading.Thread(target=hold_stream_a)
        holder.start()
        self.assertTrue(holding.wait(10))
        other = threading.Thread(target=write, args=("b",))
        other.start()
        other.join(10)
        self.assertIn("b", timings, "a producer on stream b committed while stream a was held")
        same = threading.Thread(target=write, args=("a",))
        same.start()
        same.join(10)
        self.assertNotIn("a", timings, "the same stream waits for the holder (lock_timeout hit)")
        release.set()
        holder.join(10)
        self.assertEqual(
            sorted(OutboxMessage.objects.filter(stream="a").values_list("seq", flat=True)),
            [1],
            "the timed-out producer left no seq behind",
        )
