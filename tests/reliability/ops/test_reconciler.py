"""The reconciler's bookkeeping (``reliability.ops.reconciler``): gaps republished from the outbox
with their original ids, lost tails found, escalation, back-off behind a backlog, and a pass whose
cost grows with the gaps, not with history (database only; the broker is a mock).
"""

from datetime import timedelta
from unittest import mock

from django.db import connection, transaction
from django.test import TestCase, override_settings
from django.utils import timezone

from reliability.models import OutboxMessage, ReconcileRun, StreamGap, StreamWatermark
from reliability.ops import reconciler
from reliability.produce.outbox import outbox_enqueue
from tests.reliability.consume.test_streams import HANDLER, apply, open_gaps


@override_settings(RELIABILITY_RECONCILE_GRACE_S=0, RELIABILITY_RECONCILE_MAX_ATTEMPTS=2)
class ReconcilerBookkeepingTests(TestCase):
    def setUp(self) -> None:
        self.publish = mock.patch("reliability.produce.relay.publisher").start()
        self.addCleanup(mock.patch.stopall)

    def _produce(self, count: int, stream: str = "s") -> list[OutboxMessage]:
        with transaction.atomic():
            rows = [
                outbox_enqueue(task_name=HANDLER, queue="beans", stream=stream, payload={"n": n})
                for n in range(count)
            ]
        OutboxMessage.objects.update(status=OutboxMessage.Status.SENT, sent_at=timezone.now())
        return rows

    def _age_everything(self) -> None:
        past = timezone.now() - timedelta(seconds=5)
        StreamGap.objects.update(detected_at=past)
        StreamWatermark.objects.update(producer_high_at=past, last_applied_at=past)

    def test_a_gap_is_republished_from_the_outbox_with_its_original_message_id(self) -> None:
        rows = self._produce(3)
        apply(1, 3)
        self._age_everything()
        (run,) = reconciler.reconcile_all()
        self.assertEqual(run.republished, 1)
        published = self.publish.return_value.publish.call_args.kwargs
        self.assertEqual(published["message_id"], str(rows[1].message_id))
        self.assertEqual(published["envelope"]["seq"], 2)
        self.assertEqual(StreamGap.objects.get(seq=2).republish_attempts, 1)

    def test_a_lost_tail_is_found_through_the_producer_high_water_mark(self) -> None:
        self._produce(5)
        apply(1, 2, high=5)
        self._age_everything()
        (run,) = reconciler.reconcile_all()
        self.assertEqual(run.tail_gaps_found, 3)
        self.assertEqual(open_gaps(), [3, 4, 5])

    def test_a_gap_that_stays_open_is_escalated_and_not_retried_forever(self) -> None:
        self._produce(3)
        apply(1, 3)
        for _ in range(5):
            self._age_everything()
            StreamGap.objects.update(last_republished_at=timezone.now() - timedelta(seconds=5))
            reconciler.reconcile_all()
        gap = StreamGap.objects.get(seq=2)
        self.assertEqual(gap.status, StreamGap.Status.ESCALATED)
        self.assertEqual(gap.republish_attempts, 2, "no attempts after escalation")
        self.assertEqual(self.publish.return_value.publish.call_count, 2)
        self.assertEqual(ReconcileRun.objects.filter(escalated=1).count(), 1)

    def test_a_republished_gap_waits_while_its_queue_holds_a_backlog(self) -> None:
        self._produce(3)
        apply(1, 3)
        published = self.publish.return_value.publish

        def reconcile(depth: int) -> StreamGap:
            self._age_everything()
            StreamGap.objects.update(last_republished_at=timezone.now() - timedelta(seconds=5))
            with mock.patch("reliability.ops.reconciler.queue_depths", return_value={"beans": depth}):
                reconciler.reconcile_all()
            return StreamGap.objects.get(seq=2)

        self.assertEqual(reconcile(depth=500).republish_attempts, 1, "the first attempt goes out regardless")
        gap = reconcile(depth=500)
        self.assertEqual(
            (gap.republish_attempts, gap.status, published.call_count),
            (1, StreamGap.Status.OPEN, 1),
            "the copy may be waiting behind the backlog: no second copy, no attempt counted",
        )
        gap = reconcile(depth=0)
        self.assertEqual(
            (gap.republish_attempts, published.call_count), (2, 2), "an empty queue: publish again"
        )

    def test_a_gap_missing_from_every_outbox_is_recorded_not_invented(self) -> None:
        apply(1, 3)  # nothing was produced here: seq 2 is in no outbox
        self._age_everything()
        (run,) = reconciler.reconcile_all()
        self.assertEqual((run.republished, run.not_in_outbox), (0, 1))
        self.assertIn("no outbox row", StreamGap.objects.get(seq=2).last_error)

    def test_reconciler_cost_does_not_grow_with_history(self) -> None:
        # 20,000 applied messages and 3 gaps: a pass touches the gaps, not the history.
        apply(1)
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE reliability_streamwatermark SET watermark = 20000, max_seen = 20000, producer_high = 20000"
            )
        apply(20002, 20004, 20006)
        self._age_everything()
        # Seven fixed queries (the outbox claim is one of them), plus one per gap; the 20,000 applied
        # seqs cost nothing.
        with self.assertNumQueries(7 + 3):
            reconciler.reconcile_pass(using="default")
