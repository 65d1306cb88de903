"""Stream positions, gaps, tails, the reconciler's bookkeeping and retention (database only)."""

import threading
import time
import uuid
from datetime import timedelta
from unittest import mock

from django.db import OperationalError, connection, transaction
from django.test import TestCase, TransactionTestCase, override_settings
from django.utils import timezone

from reliability.consume.streams import stream_high_record, stream_position_record
from reliability.exceptions import BrokerUnavailable, OutboxUsageError, PublishNacked
from reliability.models import (
    MessageLog,
    OutboxMessage,
    ReconcileRun,
    StreamCounter,
    StreamGap,
    StreamWatermark,
)
from reliability.ops import reconciler
from reliability.ops.retention import retention_horizons_check, retention_purge
from reliability.produce.heartbeat import stream_heartbeat_send
from reliability.produce.outbox import outbox_enqueue

HANDLER = "tests.handler"


def apply(*seqs: int, stream: str = "s", high: int | None = None) -> StreamWatermark:
    for seq in seqs:
        with transaction.atomic():
            stream_position_record(handler=HANDLER, stream=stream, seq=seq, producer_high=high)
    return StreamWatermark.objects.get(handler=HANDLER, stream=stream)


def open_gaps(stream: str = "s") -> list[int]:
    return list(
        StreamGap.objects.filter(handler=HANDLER, stream=stream)
        .exclude(status=StreamGap.Status.HEALED)
        .order_by("seq")
        .values_list("seq", flat=True)
    )


class StreamPositionTests(TestCase):
    def test_in_order_seqs_advance_the_watermark_without_gaps(self) -> None:
        position = apply(1, 2, 3)
        self.assertEqual((position.watermark, position.max_seen, position.gaps_open), (3, 3, 0))
        self.assertFalse(StreamGap.objects.exists())

    def test_a_skipped_seq_is_a_gap_until_it_arrives(self) -> None:
        position = apply(1, 2, 5)
        self.assertEqual(open_gaps(), [3, 4])
        self.assertEqual((position.watermark, position.max_seen, position.gaps_found), (2, 5, 2))
        position = apply(4)
        self.assertEqual(open_gaps(), [3])
        self.assertEqual(position.watermark, 2, "4 arrived but 3 is still missing")
        position = apply(3)
        self.assertEqual(open_gaps(), [])
        self.assertEqual((position.watermark, position.gaps_open, position.gaps_healed), (5, 0, 2))

    def test_out_of_order_arrival_heals_without_losing_the_high_water(self) -> None:
        position = apply(3, 1, 2)
        self.assertEqual((position.watermark, position.max_seen, position.gaps_open), (3, 3, 0))

    def test_streams_are_independent(self) -> None:
        apply(1, 3, stream="a")
        position = apply(1, 2, stream="b")
        self.assertEqual(open_gaps("a"), [2])
        self.assertEqual((position.watermark, position.gaps_open), (2, 0))

    def test_producer_high_comes_from_envelopes_and_heartbeats(self) -> None:
        position = apply(1, high=4)
        self.assertEqual(position.producer_high, 4)
        with transaction.atomic():
            stream_high_record(handler=HANDLER, stream="s", producer_high=9)
        position.refresh_from_db()
        self.assertEqual(position.producer_high, 9)
        with transaction.atomic():
            stream_high_record(handler=HANDLER, stream="s", producer_high=2)
        position.refresh_from_db()
        self.assertEqual(position.producer_high, 9, "a stale heartbeat never lowers it")


@override_settings(RELIABILITY_RELAY_WINDOW=32)
class HeartbeatSendTests(TestCase):
    """Heartbeats leave a window at a time, their confirms collected together (a unit test: the
    broker is a mock here; the soak and the cluster tests send them to a real one)."""

    def setUp(self) -> None:
        for n in range(40):
            StreamCounter.objects.create(stream=f"s{n:02}", last_seq=n + 1, task_name=HANDLER, queue="beans")
        StreamCounter.objects.create(stream="legacy", last_seq=3)  # no owner yet: nobody to tell
        self.publisher = mock.patch("reliability.produce.heartbeat.publisher").start().return_value
        self.addCleanup(mock.patch.stopall)

    def test_one_heartbeat_per_owned_stream_in_windows(self) -> None:
        self.publisher.publish_many.side_effect = lambda items: [None] * len(items)
        self.assertEqual(stream_heartbeat_send(using="default"), 40)
        windows = [call.args[0] for call in self.publisher.publish_many.call_args_list]
        self.assertEqual([len(window) for window in windows], [32, 8])
        self.publisher.publish.assert_not_called()
        highs = {item.envelope["stream"]: item.envelope["high"] for window in windows for item in window}
        self.assertEqual(highs, {f"s{n:02}": n + 1 for n in range(40)})

    def test_a_refused_heartbeat_is_not_counted_and_a_lost_broker_ends_the_round(self) -> None:
        self.publisher.publish_many.side_effect = [
            [PublishNacked("nack"), *[None] * 31],
            BrokerUnavailable("down"),
        ]
        with self.assertLogs("reliability.produce.heartbeat", level="WARNING") as logs:
            self.assertEqual(stream_heartbeat_send(using="default"), 31)
        self.assertIn("heartbeat of stream s00 not published", logs.output[0])
        self.assertIn("heartbeats of 8 streams not published", logs.output[1])


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


class RetentionTests(TestCase):
    def test_unsafe_retention_settings_are_refused_with_the_setting_to_change(self) -> None:
        problems = retention_horizons_check(
            dedupe_window_s=3600,
            outbox_retention_s=86400,
            max_message_age_s=7200,
            reconcile_grace_s=30,
            reconcile_max_attempts=5,
            dead_letter_replay_window_s=600,
        )
        self.assertEqual(len(problems), 1)
        self.assertIn("RELIABILITY_DEDUPE_WINDOW_S", problems[0])
        self.assertIn("RELIABILITY_MAX_MESSAGE_AGE_S", problems[0])

    def test_safe_defaults_pass(self) -> None:
        from reliability.conf import settings

        self.assertEqual(
            retention_horizons_check(
                dedupe_window_s=settings.RELIABILITY_DEDUPE_WINDOW_S,
                outbox_retention_s=settings.RELIABILITY_OUTBOX_RETENTION_S,
                max_message_age_s=settings.RELIABILITY_MAX_MESSAGE_AGE_S,
                reconcile_grace_s=settings.RELIABILITY_RECONCILE_GRACE_S,
                reconcile_max_attempts=settings.RELIABILITY_RECONCILE_MAX_ATTEMPTS,
                dead_letter_replay_window_s=settings.RELIABILITY_DEAD_LETTER_REPLAY_WINDOW_S,
            ),
            [],
        )

    @override_settings(RELIABILITY_DEDUPE_WINDOW_S=60, RELIABILITY_OUTBOX_RETENTION_S=60)
    def test_old_rows_are_deleted_in_bounded_batches_and_fresh_ones_kept(self) -> None:
        old = timezone.now() - timedelta(seconds=120)
        MessageLog.objects.bulk_create(
            [
                MessageLog(handler=HANDLER, message_id=uuid.uuid4(), stream="s", seq=n, applied_at=old)
                for n in range(25)
            ]
        )
        fresh = MessageLog.objects.create(handler=HANDLER, message_id=uuid.uuid4(), stream="s", seq=99)
        counts = retention_purge(batch_size=10, max_batches=2)
        self.assertEqual(counts["message_log"], 20, "two batches of ten, then it stops")
        counts = retention_purge(batch_size=10, max_batches=2)
        self.assertEqual(counts["message_log"], 5)
        self.assertEqual(list(MessageLog.objects.values_list("pk", flat=True)), [fresh.pk])
