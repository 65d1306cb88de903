"""The message log's figures come from counters kept with its rows, and a scrape never counts history.

Every figure is checked against the table itself (``count()``, ``Sum``) after inserts, duplicates,
rollbacks, batches and retention, on /metrics, the health page and ``pipeline_status`` alike.
"""

import json
import uuid
from datetime import timedelta
from io import StringIO
from unittest import mock

from django.conf import settings
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import IntegrityError, connections, transaction
from django.db.models import Sum
from django.test import TestCase, override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from beans.services import account_create
from reliability import counters
from reliability.conf import settings as reliability_settings
from reliability.consume import message_log
from reliability.consume.message_log import (
    message_log_count_redelivery,
    message_log_insert,
    message_log_insert_many,
    message_log_recount,
)
from reliability.models import MessageLog, OutboxMessage, PipelineCounter, QueueDepth
from reliability.ops.retention import retention_purge
from reliability.selectors import message_log_stats, pipeline_counters
from tests.reliability.consume.test_batch import consume, packed
from tests.reliability.ops.test_health import metric_samples, parse_page
from trades.services import trade_place

BEANS = settings.BEANS_DATABASE
HANDLER = "tests.counters.handler"


def log_rows() -> int:
    return sum(MessageLog.objects.using(alias).count() for alias in settings.RELIABILITY_DATABASES)


def log_redeliveries() -> int:
    return sum(
        MessageLog.objects.using(alias).aggregate(n=Sum("redeliveries", default=0))["n"]
        for alias in settings.RELIABILITY_DATABASES
    )


def insert(count: int = 1, *, applied_at: object = None) -> list[uuid.UUID]:
    """Insert ``count`` new message-log rows through the service, each in its own transaction."""
    ids = []
    for _ in range(count):
        message_id = uuid.uuid4()
        with transaction.atomic(using=BEANS):
            if applied_at is None:
                inserted = message_log_insert(
                    handler=HANDLER, message_id=message_id, stream="s", seq=1, using=BEANS
                )
            else:
                with mock.patch.object(message_log.timezone, "now", return_value=applied_at):
                    inserted = message_log_insert(
                        handler=HANDLER, message_id=message_id, stream="s", seq=1, using=BEANS
                    )
        assert inserted
        ids.append(message_id)
    return ids


def redeliver(message_id: uuid.UUID) -> None:
    with transaction.atomic(using=BEANS):
        message_log_count_redelivery(handler=HANDLER, message_id=message_id, using=BEANS)


class MessageLogCounterTests(TestCase):
    databases = "__all__"

    def assertFiguresMatchTheTable(self) -> dict[str, int]:
        stats = message_log_stats()
        self.assertEqual(stats["consumed"], log_rows())
        self.assertEqual(stats["duplicates_suppressed"], log_redeliveries())
        return stats

    def test_an_insert_counts_once_and_a_duplicate_not_at_all(self) -> None:
        (first,) = insert()
        with transaction.atomic(using=BEANS):
            self.assertFalse(
                message_log_insert(handler=HANDLER, message_id=first, stream="s", seq=1, using=BEANS)
            )
            # The same message for another handler is another row.
            self.assertTrue(
                message_log_insert(handler="other", message_id=first, stream="s", seq=1, using=BEANS)
            )
        stats = self.assertFiguresMatchTheTable()
        self.assertEqual(
            (stats["consumed"], stats["consumed_ever"], stats["duplicates_suppressed"]), (2, 2, 0)
        )

    def test_a_batch_counts_its_new_rows_in_the_one_statement_that_inserts_them(self) -> None:
        (seen,) = insert()
        entries = [(seen, "s", 1), *((uuid.uuid4(), "s", n) for n in range(2, 51))]
        with (
            transaction.atomic(using=BEANS),
            CaptureQueriesContext(connections[BEANS]) as queries,
        ):
            self.assertEqual(message_log_insert_many(handler=HANDLER, entries=entries, using=BEANS), 49)
        self.assertEqual(len([q for q in queries if "INSERT" in q["sql"]]), 1, "one statement, no extra trip")
        stats = self.assertFiguresMatchTheTable()
        self.assertEqual(stats["consumed"], 50)

    def test_a_rolled_back_insert_is_not_counted(self) -> None:
        insert(2)
        with self.assertRaises(RuntimeError), transaction.atomic(using=BEANS):
            message_log_insert_many(handler=HANDLER, entries=[(uuid.uuid4(), "s", 9)], using=BEANS)
            self.assertEqual(message_log_stats()["consumed"], 3, "counted inside the transaction")
            raise RuntimeError("the handler failed")
        self.assertEqual(self.assertFiguresMatchTheTable()["consumed"], 2)

    def test_redeliveries_are_counted_with_their_row(self) -> None:
        first, second = insert(2)
        redeliver(first)
        redeliver(first)
        redeliver(second)
        redeliver(uuid.uuid4())  # no such row: nothing to count
        stats = self.assertFiguresMatchTheTable()
        self.assertEqual((stats["duplicates_suppressed"], stats["duplicates_suppressed_ever"]), (3, 3))

    def test_retention_lowers_the_rows_now_and_never_the_counts_ever(self) -> None:
        old = timezone.now() - timedelta(seconds=reliability_settings.RELIABILITY_DEDUPE_WINDOW_S + 60)
        purged = insert(5, applied_at=old)
        kept = insert(2)
        redeliver(purged[0])
        redeliver(purged[1])
        redeliver(kept[0])

        with self.assertLogs("reliability.ops.retention", level="INFO"):
            deleted = retention_purge(using=BEANS, batch_size=2)
        self.assertEqual(deleted["message_log"], 5)

        stats = self.assertFiguresMatchTheTable()
        self.assertEqual(
            stats,
            {
                "consumed": 2,
                "duplicates_suppressed": 1,
                "consumed_ever": 7,
                "purged": 5,
                "duplicates_suppressed_ever": 3,
            },
        )
        samples = metric_samples(self.client.get(reverse("metrics")).content)
        self.assertEqual(samples[("beans_messages_consumed_total", ())], 2)
        self.assertEqual(samples[("beans_duplicates_suppressed_total", ())], 1)
        self.assertEqual(samples[("beans_message_log_inserted_total", ())], 7)
        self.assertEqual(samples[("beans_message_log_purged_total", ())], 5)
        self.assertEqual(samples[("beans_duplicate_deliveries_total", ())], 3)
        self.assertFalse(
            [key for key in samples if key[0] == "beans_pipeline_events_total"],
            "the message log's counters are not events",
        )

        # The health page and pipeline_status show the same figures.
        self.client.force_login(User.objects.create_user("operator", password=None, is_staff=True))
        page = parse_page(self.client.get(reverse("pipeline-health")).content.decode())
        self.assertEqual((page.figures["consumed"], page.figures["duplicates_suppressed"]), ("2", "1"))
        out = StringIO()
        call_command("pipeline_status", "--json", stdout=out)
        status = json.loads(out.getvalue())
        self.assertEqual((status["consumed"], status["duplicates_suppressed"]), (2, 1))

    def test_the_consumer_counts_batches_duplicates_and_batches_that_fall_back(self) -> None:
        account = account_create(owner="a", balance=1000).pk
        with self.assertLogs("trades.services", level="INFO"):
            trades = [trade_place(account_id=account, beans=10)[0] for _ in range(6)]
        rows = list(
            OutboxMessage.objects.filter(message_id__in=[t.deduction_message_id for t in trades]).order_by(
                "id"
            )
        )
        consume(packed(rows[:4]))  # one transaction: 4 new rows
        self.assertEqual(self.assertFiguresMatchTheTable()["consumed"], 4)
        # Two seen before and two new: the batch's insert rolls back, then one by one.
        with self.assertLogs("reliability.consume.task", level="INFO"):
            self.assertIn("one by one", consume(packed(rows[2:])))
        stats = self.assertFiguresMatchTheTable()
        self.assertEqual((stats["consumed"], stats["duplicates_suppressed"]), (6, 2))
        with self.assertLogs("reliability.consume.task", level="INFO"):
            self.assertEqual(consume(packed(rows)), "batch of 6 one by one: duplicate")
        stats = self.assertFiguresMatchTheTable()
        self.assertEqual((stats["consumed"], stats["duplicates_suppressed"]), (6, 8))

    def test_a_writer_adds_to_its_sessions_shard_and_a_reader_sums_every_shard(self) -> None:
        insert(3)
        with connections[BEANS].cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            (pid,) = cursor.fetchone()
        shards = counters.counter_shards()
        row = PipelineCounter.objects.using(BEANS).get(name=counters.MESSAGE_LOG_INSERTED)
        self.assertEqual((row.shard, row.value), (pid % shards, 3))
        # What other sessions (workers) added, on their shards.
        other = (row.shard + 1) % shards
        PipelineCounter.objects.using(BEANS).create(name=counters.MESSAGE_LOG_INSERTED, shard=other, value=4)
        PipelineCounter.objects.using(BEANS).create(name="housekeeping_expired_dropped", shard=other, value=2)
        counters.pipeline_counter_add(name="housekeeping_expired_dropped", using=BEANS)
        self.assertEqual(message_log_stats()["consumed_ever"], 7)
        self.assertEqual(pipeline_counters()["housekeeping_expired_dropped"], 3)
        with override_settings(RELIABILITY_COUNTER_SHARDS=1):
            insert(1)
        self.assertEqual(
            PipelineCounter.objects.using(BEANS).get(name=counters.MESSAGE_LOG_INSERTED, shard=0).value,
            1 + (4 if other == 0 else 0) + (3 if row.shard == 0 else 0),
        )
        self.assertEqual(message_log_stats()["consumed_ever"], 8)

    def test_recount_repairs_rows_written_around_the_counters(self) -> None:
        old = timezone.now() - timedelta(seconds=reliability_settings.RELIABILITY_DEDUPE_WINDOW_S + 60)
        insert(2, applied_at=old)
        with self.assertLogs("reliability.ops.retention", level="INFO"):
            retention_purge(using=BEANS)
        insert(1)
        MessageLog.objects.using(BEANS).bulk_create(
            [
                MessageLog(handler=HANDLER, message_id=uuid.uuid4(), stream="s", seq=n, redeliveries=1)
                for n in range(3)
            ]
        )
        self.assertEqual(message_log_stats()["consumed"], 1, "written around the counters: not counted")

        with self.assertLogs("reliability.consume.message_log", level="INFO"):
            out = StringIO()
            call_command("message_log_recount", stdout=out)
        self.assertIn("4 message-log rows, 3 redeliveries", out.getvalue())
        stats = self.assertFiguresMatchTheTable()
        self.assertEqual((stats["consumed"], stats["consumed_ever"], stats["purged"]), (4, 6, 2))
        with self.assertLogs("reliability.consume.message_log", level="INFO"):
            self.assertEqual(message_log_recount(using=BEANS), {"rows": 4, "redeliveries": 3})
        self.assertEqual(message_log_stats()["consumed"], 4, "idempotent")


class ScrapeCostTests(TestCase):
    """What a scrape reads does not depend on how many rows the history holds."""

    databases = "__all__"

    def scrape(self) -> tuple[list[str], dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
        with mock.patch("reliability.selectors.broker_connection", side_effect=AssertionError("no broker")):
            contexts = [CaptureQueriesContext(connections[alias]) for alias in connections]
            for context in contexts:
                context.__enter__()
            try:
                response = self.client.get(reverse("metrics"))
            finally:
                for context in contexts:
                    context.__exit__(None, None, None)
        self.assertEqual(response.status_code, 200)
        return [query["sql"] for context in contexts for query in context], metric_samples(response.content)

    def test_a_scrape_never_reads_the_message_log_nor_opens_a_broker_connection(self) -> None:
        insert(1)
        small, samples = self.scrape()
        self.assertEqual(samples[("beans_messages_consumed_total", ())], 1)
        insert(30)
        for message_id in list(MessageLog.objects.using(BEANS).values_list("message_id", flat=True))[:5]:
            redeliver(message_id)
        large, samples = self.scrape()
        self.assertEqual(samples[("beans_messages_consumed_total", ())], 31)
        self.assertEqual(samples[("beans_duplicates_suppressed_total", ())], 5)
        table = MessageLog._meta.db_table
        self.assertFalse([sql for sql in small + large if table in sql], "the message log is never read")
        self.assertEqual(len(small), len(large), "as many queries however long the history")


class CounterConstraintTests(TestCase):
    databases = "__all__"

    def test_one_row_per_counter_and_shard(self) -> None:
        PipelineCounter.objects.create(name="c", shard=1, value=1)
        PipelineCounter.objects.create(name="c", shard=2, value=1)
        with self.assertRaises(IntegrityError), transaction.atomic():
            PipelineCounter.objects.create(name="c", shard=1, value=1)

    def test_a_counter_never_goes_below_zero(self) -> None:
        with self.assertRaises(IntegrityError), transaction.atomic():
            PipelineCounter.objects.create(name="c", shard=0, value=-1)
        with self.assertRaises(IntegrityError), transaction.atomic():
            PipelineCounter.objects.create(name="c", shard=-1, value=1)
        with self.assertRaisesMessage(ValueError, "only grows"):
            counters.pipeline_counter_add(name="c", by=-1)

    def test_a_queue_depth_is_unknown_or_not_negative(self) -> None:
        QueueDepth.objects.create(queue="unknown", messages=None)
        QueueDepth.objects.create(queue="empty", messages=0)
        with self.assertRaises(IntegrityError), transaction.atomic():
            QueueDepth.objects.create(queue="q", messages=-1)
