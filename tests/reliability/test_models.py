"""Every named database constraint of the library's tables refuses the row it exists to refuse.

The rows are written with the ORM directly, bypassing the services, because the
point is that the database holds the invariant even when code gets it wrong.
"""

import uuid

from django.db import IntegrityError, transaction
from django.test import TestCase
from django.utils import timezone

from reliability.ids import message_id_new
from reliability.models import MessageLog, OutboxMessage, StreamCounter
from reliability.produce.outbox import outbox_enqueue, outbox_enqueue_many


def _outbox(**fields: object) -> OutboxMessage:
    values: dict[str, object] = {
        "message_id": message_id_new(),
        "task_name": "beans.deduct",
        "queue": "beans",
        "stream": "deductions.1",
        "seq": 1,
        "payload": {},
    }
    values.update(fields)
    return OutboxMessage.objects.create(**values)


def _message_log(message_id: uuid.UUID, **fields: object) -> MessageLog:
    values: dict[str, object] = {"handler": "beans.deduct", "stream": "deductions.1", "seq": 1}
    values.update(fields)
    return MessageLog.objects.create(message_id=message_id, **values)


class OutboxConstraintTests(TestCase):
    def test_duplicate_message_id_is_refused(self) -> None:
        message_id = message_id_new()
        _outbox(message_id=message_id, seq=1)
        with self.assertRaisesMessage(IntegrityError, "outbox_message_id_unique"), transaction.atomic():
            _outbox(message_id=message_id, seq=2)

    def test_stream_positions_are_handed_out_once_by_the_locked_counter(self) -> None:
        # (stream, seq) cannot be a unique key of the partitioned outbox (it lacks message_id):
        # the counter row, locked in the producing transaction, is what hands each seq out once.
        with transaction.atomic():
            outbox_enqueue(task_name="beans.deduct", queue="beans", stream="deductions.9", payload={})
        with self.assertRaises(RuntimeError), transaction.atomic():
            outbox_enqueue(task_name="beans.deduct", queue="beans", stream="deductions.9", payload={})
            raise RuntimeError("the producer's transaction rolls back")
        with transaction.atomic():
            outbox_enqueue_many(
                task_name="beans.deduct", queue="beans", messages=[("deductions.9", {}, None)] * 2
            )
        self.assertEqual(
            list(
                OutboxMessage.objects.filter(stream="deductions.9")
                .order_by("seq")
                .values_list("seq", flat=True)
            ),
            [1, 2, 3],
        )

    def test_a_message_id_is_unique_across_partitions(self) -> None:
        # Both rows route to one partition (the partition key is message_id), so the partition's
        # unique index sees both: in a time slice and in the default partition alike.
        for message_id in (message_id_new(), uuid.uuid4()):
            _outbox(message_id=message_id, seq=1)
            with self.assertRaisesMessage(IntegrityError, "outbox_message_id_unique"), transaction.atomic():
                _outbox(message_id=message_id, stream="deductions.2", seq=2)

    def test_same_seq_on_another_stream_is_allowed(self) -> None:
        _outbox(stream="deductions.1", seq=1)
        _outbox(stream="deductions.2", seq=1)
        self.assertEqual(OutboxMessage.objects.filter(seq=1).count(), 2)

    def test_seq_zero_is_refused(self) -> None:
        with self.assertRaisesMessage(IntegrityError, "outbox_seq_positive"), transaction.atomic():
            _outbox(seq=0)

    def test_sent_message_without_sent_at_is_refused(self) -> None:
        with self.assertRaisesMessage(IntegrityError, "outbox_sent_iff_sent_at"), transaction.atomic():
            _outbox(status=OutboxMessage.Status.SENT, sent_at=None)

    def test_pending_message_with_sent_at_is_refused(self) -> None:
        with self.assertRaisesMessage(IntegrityError, "outbox_sent_iff_sent_at"), transaction.atomic():
            _outbox(status=OutboxMessage.Status.PENDING, sent_at=timezone.now())

    def test_negative_stream_counter_is_refused(self) -> None:
        with self.assertRaisesMessage(IntegrityError, "stream_counter_seq_nonnegative"), transaction.atomic():
            StreamCounter.objects.create(stream="deductions.1", last_seq=-1)


class MessageLogConstraintTests(TestCase):
    def test_same_message_twice_for_one_handler_is_refused(self) -> None:
        message_id = message_id_new()
        _message_log(message_id, handler="beans.deduct")
        with (
            self.assertRaisesMessage(IntegrityError, "message_log_handler_message_unique"),
            transaction.atomic(),
        ):
            _message_log(message_id, handler="beans.deduct")

    def test_same_message_for_two_handlers_is_allowed(self) -> None:
        message_id = message_id_new()
        _message_log(message_id, handler="beans.deduct")
        _message_log(message_id, handler="trades.record_outcome")
        self.assertEqual(MessageLog.objects.filter(message_id=message_id).count(), 2)
