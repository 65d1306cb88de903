"""Time partitions of the outbox and the message log: made ahead, dropped whole past retention,
the figures kept right, and the migration that partitions tables already holding rows."""

import itertools
import random
import threading
import time
import uuid
from datetime import timedelta
from io import StringIO
from unittest import mock

from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import OperationalError, ProgrammingError, connection, connections, transaction
from django.db.migrations.executor import MigrationExecutor
from django.test import TestCase, TransactionTestCase, override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from reliability.consume.message_log import (
    message_log_count_redelivery,
    message_log_insert,
    message_log_record_outcomes,
)
from reliability.ids import message_id_new
from reliability.models import MessageLog, OutboxMessage
from reliability.ops.partitions import (
    LOCK_TIMEOUT_MS,
    OLD_HOLDER_MS,
    partitions_drop,
    partitions_ensure,
    partitions_list,
)
from reliability.ops.retention import retention_purge
from reliability.produce.relay import _outbox_mark_sent
from reliability.selectors import message_log_stats

DAY_S = 86_400
DAY_MS = DAY_S * 1000
LOG, OUTBOX = MessageLog._meta.db_table, OutboxMessage._meta.db_table
HANDLER = "tests.handler"
# The consumer's side: the bean service's database when it has one of its own.
BEANS = settings.BEANS_DATABASE
# Windows of 4 days that the system checks accept (each above every redelivery horizon).
FOUR_DAY_WINDOWS = {
    "RELIABILITY_DEDUPE_WINDOW_S": 4 * DAY_S,
    "RELIABILITY_OUTBOX_RETENTION_S": 4 * DAY_S,
    "RELIABILITY_MAX_MESSAGE_AGE_S": 2 * DAY_S,
    "RELIABILITY_DEAD_LETTER_REPLAY_WINDOW_S": 3 * DAY_S,
}


def now_ms() -> int:
    return int(timezone.now().timestamp() * 1000)


def uuid7_at(ms: int) -> uuid.UUID:
    """A UUIDv7 made at Unix millisecond ``ms`` (version 7, RFC variant, random tail)."""
    return uuid.UUID(
        int=(ms << 80) | (0x7 << 76) | (random.getrandbits(12) << 64) | (0b10 << 62) | random.getrandbits(62)
    )


def partition_of(table: str, message_id: uuid.UUID, using: str = "default") -> str:
    with connections[using].cursor() as cursor:
        cursor.execute(f"SELECT tableoid::regclass::text FROM {table} WHERE message_id = %s", [message_id])  # noqa: S608
        row = cursor.fetchone()
    return row[0] if row else ""


def log(message_id: uuid.UUID, seq: int = 1) -> None:
    with transaction.atomic(using=BEANS):
        assert message_log_insert(handler=HANDLER, message_id=message_id, stream="s", seq=seq, using=BEANS)


def outbox(message_id: uuid.UUID, *, seq: int, sent: bool = True) -> None:
    OutboxMessage.objects.create(
        message_id=message_id,
        task_name=HANDLER,
        queue="q",
        stream="s",
        seq=seq,
        payload={},
        status=OutboxMessage.Status.SENT if sent else OutboxMessage.Status.PENDING,
        sent_at=timezone.now() if sent else None,
        created_at=timezone.now() - timedelta(days=30),
    )


def partitions_list_names(table: str, using: str) -> list[str]:
    return [part.name for part in partitions_list(table=table, using=using)] + [f"{table}_default"]


class PartitionTests(TestCase):
    databases = "__all__"

    def setUp(self) -> None:
        # Daily slices from ten days ago, so that some lie past the four-day windows.
        for alias in sorted({"default", BEANS}):
            for table in (LOG, OUTBOX):
                partitions_ensure(
                    table=table,
                    now_ms=now_ms(),
                    since_ms=now_ms() - 10 * DAY_MS,
                    width_s=DAY_S,
                    ahead=3,
                    using=alias,
                )

    def test_slices_cover_the_past_and_are_made_ahead(self) -> None:
        slices = partitions_list(table=LOG, using=BEANS)
        self.assertLessEqual(slices[0].from_ms, now_ms() - 10 * DAY_MS)
        self.assertGreaterEqual(slices[-1].to_ms, now_ms() + 3 * DAY_MS)
        for earlier, later in itertools.pairwise(slices):
            self.assertEqual(earlier.to_ms, later.from_ms, "no hole between slices")
        message_id = message_id_new()
        log(message_id)
        self.assertRegex(
            partition_of(LOG, message_id, BEANS), rf"^{LOG}_p\d+$", "a UUIDv7 goes to its time slice"
        )
        other = uuid.uuid4()
        log(other)
        self.assertEqual(
            partition_of(LOG, other, BEANS), f"{LOG}_default", "any other id to the default partition"
        )

    def assert_last_statement_reads_one_slice(
        self, captured: CaptureQueriesContext, table: str, using: str
    ) -> None:
        # The consumer's and the relay's updates run while they hold the table: were they to probe
        # every slice, they would hold it long enough for retention's DROP to queue inserts.
        with connections[using].cursor() as cursor:
            cursor.execute("EXPLAIN " + captured.captured_queries[-1]["sql"])
            plan = "\n".join(line for (line,) in cursor.fetchall())
        scanned = {name for name in partitions_list_names(table, using) if f" {name} " in plan}
        self.assertEqual(len(scanned), 1, f"one slice holds the three messages; the plan reads:\n{plan}")

    def test_recording_outcomes_reads_only_the_slices_of_their_messages(self) -> None:
        message_ids = [message_id_new() for _ in range(3)]
        for seq, message_id in enumerate(message_ids, start=1):
            log(message_id, seq=seq)
        with CaptureQueriesContext(connections[BEANS]) as captured:
            message_log_record_outcomes(
                handler=HANDLER, outcomes=[(m, "applied") for m in message_ids], using=BEANS
            )
        self.assert_last_statement_reads_one_slice(captured, LOG, BEANS)
        self.assertEqual(
            set(
                MessageLog.objects.using(BEANS)
                .filter(message_id__in=message_ids)
                .values_list("outcome", flat=True)
            ),
            {"applied"},
        )

    def test_marking_messages_sent_reads_only_the_slices_of_their_messages(self) -> None:
        message_ids = [message_id_new() for _ in range(3)]
        for seq, message_id in enumerate(message_ids, start=1):
            outbox(message_id, seq=seq, sent=False)
        messages = list(OutboxMessage.objects.filter(message_id__in=message_ids))
        with CaptureQueriesContext(connection) as captured:
            _outbox_mark_sent(messages, using="default")
        self.assert_last_statement_reads_one_slice(captured, OUTBOX, "default")
        self.assertEqual(
            set(OutboxMessage.objects.filter(message_id__in=message_ids).values_list("status", flat=True)),
            {OutboxMessage.Status.SENT},
        )

    @override_settings(**FOUR_DAY_WINDOWS)
    def test_retention_drops_whole_slices_past_the_window_and_counts_what_went(self) -> None:
        old = [uuid7_at(now_ms() - days * DAY_MS) for days in (9, 8, 6)]
        recent = [uuid7_at(now_ms() - 2 * DAY_MS), message_id_new()]
        for seq, message_id in enumerate(old + recent, start=1):
            log(message_id, seq)
        with transaction.atomic(using=BEANS):
            message_log_count_redelivery(handler=HANDLER, message_id=old[0], using=BEANS)
            message_log_count_redelivery(handler=HANDLER, message_id=recent[0], using=BEANS)
        slices_before = len(partitions_list(table=LOG, using=BEANS))

        with self.assertLogs("reliability.ops.retention", level="INFO"):
            counts = retention_purge(using=BEANS)

        self.assertEqual(counts["message_log"], 0, "nothing deleted row by row")
        self.assertGreaterEqual(counts["partitions_dropped"], 5, "days -10 to -5 of both tables")
        self.assertEqual(
            set(MessageLog.objects.using(BEANS).values_list("message_id", flat=True)),
            set(recent),
            "old slices dropped",
        )
        cutoff = now_ms() - 4 * DAY_MS
        self.assertTrue(
            all(p.to_ms > cutoff for p in partitions_list(table=LOG, using=BEANS)), "only past slices go"
        )
        self.assertLess(len(partitions_list(table=LOG, using=BEANS)), slices_before)
        stats = message_log_stats()
        self.assertEqual(
            (stats["consumed"], stats["purged"], stats["duplicates_suppressed"], stats["consumed_ever"]),
            (2, 3, 1, 5),
            "the figures of the rows now stay right",
        )

    @override_settings(**FOUR_DAY_WINDOWS)
    def test_a_slice_inside_the_window_is_kept_even_if_its_start_is_past(self) -> None:
        # The slice that holds the cutoff goes only once all of it is past: the width adds to
        # retention, it never takes from it.
        on_the_edge = uuid7_at(now_ms() - 4 * DAY_MS + 60_000)
        log(on_the_edge)
        retention_purge(using=BEANS)
        self.assertTrue(MessageLog.objects.using(BEANS).filter(message_id=on_the_edge).exists())

    @override_settings(**FOUR_DAY_WINDOWS)
    def test_an_outbox_slice_with_a_pending_row_is_kept(self) -> None:
        pending, sent = uuid7_at(now_ms() - 8 * DAY_MS), uuid7_at(now_ms() - 9 * DAY_MS)
        outbox(pending, seq=1, sent=False)
        outbox(sent, seq=2)
        with self.assertLogs("reliability.ops.retention", level="WARNING") as logs:
            retention_purge()
        self.assertIn("pending outbox rows", "\n".join(logs.output))
        self.assertEqual(list(OutboxMessage.objects.values_list("message_id", flat=True)), [pending])

    @override_settings(**FOUR_DAY_WINDOWS)
    def test_the_default_partition_is_emptied_row_by_row(self) -> None:
        old, fresh = uuid.uuid4(), uuid.uuid4()
        log(old)
        log(fresh)
        MessageLog.objects.using(BEANS).filter(message_id=old).update(
            applied_at=timezone.now() - timedelta(days=5)
        )
        with self.assertLogs("reliability.ops.retention", level="INFO"):
            counts = retention_purge(using=BEANS)
        self.assertEqual(counts["message_log"], 1)
        self.assertEqual(list(MessageLog.objects.using(BEANS).values_list("message_id", flat=True)), [fresh])
        self.assertEqual(message_log_stats()["purged"], 1)

    @override_settings(**FOUR_DAY_WINDOWS)
    def test_the_partitions_command_drops_and_makes_for_the_owner(self) -> None:
        log(uuid7_at(now_ms() - 8 * DAY_MS))
        out = StringIO()
        with override_settings(RELIABILITY_PARTITIONS_AHEAD=6):
            call_command("partitions", stdout=out)
        self.assertRegex(out.getvalue(), rf"{BEANS}: [1-9]\d* partitions dropped, [1-9]\d* made")
        self.assertFalse(MessageLog.objects.using(BEANS).exists())

    @override_settings(RELIABILITY_PARTITIONS_AHEAD=9)  # slices to make: the DDL runs
    def test_retention_without_the_right_to_run_ddl_logs_what_to_do_and_goes_on(self) -> None:
        with (
            mock.patch(
                "reliability.ops.partitions._create", side_effect=ProgrammingError("permission denied")
            ),
            self.assertLogs("reliability.ops.retention", level="ERROR") as logs,
        ):
            counts = retention_purge()
        self.assertIn("run manage.py partitions as the tables' owner", logs.output[0])
        self.assertEqual(counts["partitions_failed"], 1)
        with (
            mock.patch(
                "reliability.ops.partitions._create", side_effect=ProgrammingError("permission denied")
            ),
            self.assertLogs("reliability.ops.retention", level="ERROR"),
            self.assertRaisesMessage(CommandError, "could not be maintained"),
        ):
            call_command("partitions", stdout=StringIO())

    def test_a_slice_made_late_takes_its_rows_from_the_default_partition(self) -> None:
        ahead = uuid7_at(now_ms() + 10 * DAY_MS)  # past the slices made so far (a clock far ahead)
        log(ahead)
        self.assertEqual(partition_of(LOG, ahead, BEANS), f"{LOG}_default")
        with self.assertLogs("reliability.ops.partitions", level="WARNING"):
            partitions_ensure(table=LOG, now_ms=now_ms() + 10 * DAY_MS, width_s=DAY_S, ahead=2, using=BEANS)
        self.assertRegex(partition_of(LOG, ahead, BEANS), rf"^{LOG}_p\d+$")
        with transaction.atomic(using=BEANS):
            self.assertFalse(
                message_log_insert(handler=HANDLER, message_id=ahead, stream="s", seq=1, using=BEANS),
                "still a duplicate",
            )


class HeldTable:
    """A transaction on another connection that holds ``table`` as an insert does (ROW EXCLUSIVE)
    until ``release``: what a DROP of one of its partitions must wait for."""

    def __init__(self, table: str) -> None:
        self.table, self.held, self.released = table, threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._hold, daemon=True)

    def _hold(self) -> None:
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(f"LOCK TABLE {self.table} IN ROW EXCLUSIVE MODE")
                self.held.set()
                self.released.wait(30)
        finally:
            connection.close()

    def __enter__(self) -> "HeldTable":
        self.thread.start()
        self.held.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.released.set()
        self.thread.join(10)


class PartitionDropLockTests(TransactionTestCase):
    """A DROP waits for the table's lock briefly and often, never long (inserts queue behind it)."""

    def setUp(self) -> None:
        partitions_ensure(
            table=OUTBOX, now_ms=now_ms(), since_ms=now_ms() - 10 * DAY_MS, width_s=DAY_S, ahead=1
        )
        self.oldest = partitions_list(table=OUTBOX)[0]

    def test_a_drop_behind_a_short_transaction_is_retried_until_it_goes(self) -> None:
        with HeldTable(OUTBOX) as held:
            threading.Timer(3 * LOCK_TIMEOUT_MS / 1000, held.released.set).start()
            dropped = partitions_drop(table=OUTBOX, partitions=[self.oldest])
        self.assertEqual(dropped, [self.oldest.name])

    def drop_and_close(self) -> None:
        try:
            partitions_drop(table=OUTBOX, partitions=[self.oldest])
        finally:
            connection.close()  # this thread's own

    def test_a_drop_never_queues_the_tables_inserts_behind_a_long_transaction(self) -> None:
        # A DROP waiting for the parent's lock would queue every insert behind it: an insert
        # allowed to wait 50 ms would then fail. Behind a transaction already old, no drop is tried.
        refused = []
        with mock.patch("reliability.ops.partitions.DROP_ATTEMPTS", 4), HeldTable(OUTBOX):
            time.sleep(2 * OLD_HOLDER_MS / 1000)
            with self.assertLogs("reliability.ops.partitions", level="WARNING"):
                dropping = threading.Thread(target=self.drop_and_close)
                dropping.start()
                for seq in itertools.count(1):
                    try:
                        with transaction.atomic():
                            connection.cursor().execute("SET LOCAL lock_timeout = '50ms'")
                            outbox(message_id_new(), seq=seq)
                    except OperationalError as exc:
                        refused.append(str(exc))
                    if not dropping.is_alive():
                        break
                    time.sleep(0.01)
                dropping.join()
        self.assertEqual(refused, [], "an insert waited behind the drop")

    def test_a_drop_behind_a_long_transaction_is_left_for_the_next_run(self) -> None:
        with (
            mock.patch("reliability.ops.partitions.DROP_ATTEMPTS", 2),
            self.assertLogs("reliability.ops.partitions", level="WARNING") as logs,
            HeldTable(OUTBOX),
        ):
            self.assertEqual(partitions_drop(table=OUTBOX, partitions=[self.oldest]), [])
        self.assertIn("not dropped (the next run retries)", logs.output[0])
        self.assertEqual(partitions_drop(table=OUTBOX, partitions=[self.oldest]), [self.oldest.name])


class MigrationWithRowsTests(TransactionTestCase):
    """0010 partitions tables that already hold rows: none lost, ids and duplicates kept."""

    before, after = (
        ("reliability", "0009_counter_shards_and_queue_depths"),
        (
            "reliability",
            "0010_partition_outbox_and_message_log",
        ),
    )

    def migrate(self, target: tuple[str, str]) -> None:
        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        executor.migrate([target])

    def tearDown(self) -> None:
        self.migrate(self.after)

    def test_every_row_survives_and_duplicates_are_still_refused(self) -> None:
        self.migrate(self.before)
        recent, old, other = message_id_new(), uuid7_at(now_ms() - 40 * DAY_MS), uuid.uuid4()
        with connection.cursor() as cursor:
            for n, message_id in enumerate((recent, old, other), start=1):
                cursor.execute(
                    f"INSERT INTO {LOG} (handler, message_id, stream, seq, outcome, redeliveries, applied_at) "  # noqa: S608
                    "VALUES (%s, %s, 's', %s, 'deducted', %s, now())",
                    [HANDLER, message_id, n, n - 1],
                )
                cursor.execute(
                    f"INSERT INTO {OUTBOX} (message_id, task_name, queue, stream, seq, payload, status, attempts, "  # noqa: S608
                    "last_error, next_attempt_at, created_at, sent_at, claimed_by) "
                    "VALUES (%s, %s, 'q', 's', %s, '{}', 'sent', 0, '', now(), now(), now(), '')",
                    [message_id, HANDLER, n],
                )
            cursor.execute(f"SELECT id, message_id, redeliveries FROM {LOG} ORDER BY id")  # noqa: S608
            rows_before = cursor.fetchall()

        self.migrate(self.after)

        self.assertEqual(
            sorted(MessageLog.objects.values_list("id", "message_id", "redeliveries")), sorted(rows_before)
        )
        self.assertEqual(OutboxMessage.objects.count(), 3)
        self.assertRegex(partition_of(LOG, recent), rf"^{LOG}_p\d+$", "a recent UUIDv7 row in its slice")
        self.assertEqual(partition_of(LOG, old), f"{LOG}_default", "past every window: the default partition")
        self.assertEqual(partition_of(OUTBOX, other), f"{OUTBOX}_default")
        for message_id in (recent, old, other):
            with self.subTest(str(message_id)), transaction.atomic():
                self.assertFalse(
                    message_log_insert(handler=HANDLER, message_id=message_id, stream="s", seq=9)
                )
        new = message_id_new()
        with transaction.atomic():
            self.assertTrue(message_log_insert(handler=HANDLER, message_id=new, stream="s", seq=4))
        self.assertGreater(
            MessageLog.objects.get(message_id=new).pk,
            max(pk for pk, _, _ in rows_before),
            "ids continue above",
        )
