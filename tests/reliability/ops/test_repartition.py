"""manage.py repartition: streams move to new queue partitions only once drained."""

from io import StringIO

from django.core.management import CommandError, call_command
from django.db import transaction
from django.test import TransactionTestCase, override_settings, tag

from beans.contracts import DEDUCT_TASK
from harness.rabbitmq import queues_purge
from reliability.exceptions import StreamsNotDrained
from reliability.models import OutboxMessage, StreamCounter
from reliability.ops.repartition import streams_repartition_apply, streams_repartition_plan
from reliability.produce.outbox import outbox_enqueue


@override_settings(RELIABILITY_RELAY_FAST_PATH=False)
@tag("broker")
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

    @override_settings(TRADES_QUEUE_PARTITIONS=2, BEANS_QUEUES=["beans.0", "beans.1"])
    def test_without_apply_a_drained_pipeline_is_shown_its_moves_and_nothing_moves(self) -> None:
        OutboxMessage.objects.all().delete()
        StreamCounter.objects.update(last_seq=0)
        out = StringIO()
        call_command("repartition", stdout=out)
        self.assertIn("deductions.1: beans -> beans.1", out.getvalue())
        self.assertIn("drained; run again with --apply", out.getvalue())
        self.assertEqual(set(StreamCounter.objects.values_list("queue", flat=True)), {"beans"})

    def test_the_plan_names_what_is_in_flight_and_apply_refuses_it(self) -> None:
        plan = streams_repartition_plan(task_name=DEDUCT_TASK, queue_of=lambda stream: f"{stream}.new")
        self.assertEqual([move.new_queue for move in plan.moves], [f"deductions.{n}.new" for n in range(3)])
        self.assertIn(f"3 messages of {DEDUCT_TASK} are still in the outbox", plan.not_drained)
        with self.assertRaises(StreamsNotDrained):
            streams_repartition_apply(plan, dry_run=True)
        self.assertEqual(set(StreamCounter.objects.values_list("queue", flat=True)), {"beans"})
