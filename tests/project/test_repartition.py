"""manage.py repartition: streams move to new queue partitions only once drained."""

from io import StringIO

from django.core.management import CommandError, call_command
from django.db import transaction
from django.test import TransactionTestCase, override_settings

from harness.rabbitmq import queues_purge
from project.contracts import DEDUCT_TASK
from reliability.models import OutboxMessage, StreamCounter
from reliability.produce.outbox import outbox_enqueue


@override_settings(RELIABILITY_RELAY_FAST_PATH=False)
class RepartitionTests(TransactionTestCase):
    def setUp(self) -> None:
        queues_purge()  # messages earlier tests left in this run's vhost
        with transaction.atomic():
            for stream in ("deductions.0", "deductions.1", "deductions.2"):
                outbox_enqueue(task_name=DEDUCT_TASK, queue="beans", stream=stream, payload={})

    @override_settings(TRADES_QUEUE_PARTITIONS=2, BEANS_QUEUES=["beans.0", "beans.1"])
    def test_refuses_while_messages_are_in_flight(self) -> None:
        with self.assertRaisesMessage(CommandError, "not drained"):
            call_command("repartition", "--apply", stdout=StringIO())
        self.assertEqual(set(StreamCounter.objects.values_list("queue", flat=True)), {"beans"})

    @override_settings(TRADES_QUEUE_PARTITIONS=2, BEANS_QUEUES=["beans.0", "beans.1"])
    def test_moves_each_stream_to_its_partition_once_drained(self) -> None:
        OutboxMessage.objects.all().delete()
        StreamCounter.objects.update(last_seq=0)  # nothing produced that is not applied
        out = StringIO()
        call_command("repartition", "--apply", stdout=out)
        self.assertEqual(
            dict(StreamCounter.objects.values_list("stream", "queue")),
            {"deductions.0": "beans.0", "deductions.1": "beans.1", "deductions.2": "beans.0"},
        )
        self.assertIn("moved 3 streams", out.getvalue())
