"""The base class of the integration tests: real worker and beat processes, invariant checks.

Processes, polling and the broker's queues are ``harness``'s (``harness.processes``,
``harness.polling``, ``harness.rabbitmq``); what is here is what a test asserts.
"""

from collections import Counter, defaultdict
from collections.abc import Callable

from django.test import TransactionTestCase, tag

from beans.models import Account, LedgerEntry
from beans.services import account_create
from harness.polling import poll_until
from harness.processes import CeleryProcess, run_manage_command
from harness.rabbitmq import queue_message_counts, queues_purge
from project.invariants import pipeline_violations
from reliability.conf import settings
from reliability.models import OutboxMessage, ParkedMessage
from reliability.produce.publisher import publisher
from reliability.selectors import stream_positions
from trades.models import Trade


@tag("broker")
class PipelineTestCase(TransactionTestCase):
    """Integration tests against a real RabbitMQ, PostgreSQL and Celery processes.

    Tagged ``broker``, and so is every subclass: the unit tier (``make test-fast``) leaves them out.
    """

    databases = "__all__"
    processes: list[CeleryProcess]

    def setUp(self) -> None:
        super().setUp()
        self.processes = []
        self.initial_balances: dict[int, int] = {}
        self.purge_queues()  # whatever earlier tests left behind (closes the publisher)
        publisher().topology_declare()  # then connect and declare, once
        self.addCleanup(self.purge_queues)
        self.addCleanup(self.stop_processes)

    # Short reconciler periods so that healing shows within a test.
    process_env = {
        "RELIABILITY_RECONCILE_GRACE_S": "1",
        "RELIABILITY_RECONCILE_INTERVAL_S": "1",
        "RELIABILITY_HEARTBEAT_INTERVAL_S": "1",
        "RELIABILITY_DEAD_LETTER_DRAIN_INTERVAL_S": "1",
        "RELIABILITY_REQUEUE_PAUSE_MAX_S": "0.05",
    }

    def start_worker(
        self, *, name: str = "w1", concurrency: int = 2, env: dict[str, str] | None = None
    ) -> CeleryProcess:
        worker = CeleryProcess(
            "worker", name=name, concurrency=concurrency, env={**self.process_env, **(env or {})}
        )
        self.processes.append(worker)
        return worker.start()

    def start_beat(self) -> CeleryProcess:
        beat = CeleryProcess("beat", env=self.process_env)
        self.processes.append(beat)
        return beat.start()

    def run_manage(self, *args: str, env: dict[str, str] | None = None, timeout: float = 60) -> int:
        """Run a management command in a subprocess against the test databases; return its exit code."""
        return run_manage_command(*args, env={**self.process_env, **(env or {})}, timeout=timeout)

    def assert_streams_contiguous(self) -> None:
        """I6: every stream's consumed seqs are exactly 1..k, with k the producer's last seq."""
        positions = stream_positions()
        self.assertTrue(positions, "some streams were produced")
        for position in positions:
            with self.subTest(stream=position["stream"]):
                self.assertEqual(position["consumed_watermark"], position["produced_seq"], position)
                self.assertEqual(position["max_seen"], position["produced_seq"], position)
                self.assertEqual(position["gaps_open"], 0, position)

    def stop_processes(self) -> None:
        for process in self.processes:
            process.stop()

    def purge_queues(self) -> None:
        queues_purge()

    def logs(self) -> str:
        return "\n".join(f"--- {p.kind} {p.name} ---\n{p.log_tail()}" for p in self.processes)

    def create_accounts(self, count: int, *, balance: int) -> list[int]:
        ids = []
        for n in range(count):
            account = account_create(owner=f"test-{n}", balance=balance)
            self.initial_balances[account.pk] = balance
            ids.append(account.pk)
        return ids

    def wait_for(self, predicate: Callable[[], bool], *, timeout: float, what: str) -> None:
        """Like ``poll_until``, with the worker and beat logs in the failure message."""
        try:
            poll_until(predicate, timeout=timeout, interval=0.5, what=what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None

    def wait_drained(self, *, timeout: float = 120) -> None:
        """Wait until every trade is settled and the outbox is empty."""

        def drained() -> bool:
            return (
                not Trade.objects.filter(status=Trade.Status.PENDING).exists()
                and not OutboxMessage.objects.filter(status=OutboxMessage.Status.PENDING).exists()
            )

        try:
            poll_until(drained, timeout=timeout, interval=0.5, what="the pipeline to drain")
        except AssertionError as exc:
            pending = Trade.objects.filter(status=Trade.Status.PENDING).count()
            outbox = OutboxMessage.objects.filter(status=OutboxMessage.Status.PENDING).count()
            raise AssertionError(
                f"{exc}: {pending} trades pending, {outbox} outbox rows\n{self.logs()}"
            ) from None

    def wait_queues_empty(self, *, timeout: float = 60) -> None:
        """Wait until no message is ready in any project queue."""

        def empty() -> bool:
            return all(count == 0 for count in queue_message_counts().values())

        poll_until(empty, timeout=timeout, interval=0.5, what="the queues to empty")

    def assert_per_account_order(self) -> None:
        """Each account's deductions were applied in the order its trades were placed."""
        seq_of = dict(OutboxMessage.objects.filter(task_name="beans.deduct").values_list("message_id", "seq"))
        applied: dict[int, list[int]] = defaultdict(list)
        entries = LedgerEntry.objects.filter(kind=LedgerEntry.Kind.DEDUCTION).order_by("id")
        for account_id, message_id in entries.values_list("account_id", "message_id"):
            assert message_id is not None  # a deduction always has one (ledger_deduction_has_message_id)
            applied[account_id].append(seq_of[message_id])
        self.assertTrue(applied)
        violations = {account: seqs for account, seqs in applied.items() if seqs != sorted(seqs)}
        self.assertEqual(violations, {}, "accounts whose deductions were applied out of order")
        self.assertFalse(ParkedMessage.objects.using(settings.BEANS_DATABASE).exists(), "nothing left parked")

    def assert_exactly_once(self, *, trades: int) -> None:
        """Assert I1, I2, I5, I9 independently of the code under test's own bookkeeping."""
        self.assertEqual(Trade.objects.count(), trades, "every accepted trade exists")
        self.assertEqual(pipeline_violations(), [], self.logs())
        deductions = Counter(
            LedgerEntry.objects.filter(kind=LedgerEntry.Kind.DEDUCTION).values_list("message_id", flat=True)
        )
        deducted_by_account: dict[int, int] = defaultdict(int)
        for trade in Trade.objects.all():
            expected = 1 if trade.status == Trade.Status.DEDUCTED else 0
            self.assertEqual(deductions[trade.deduction_message_id], expected, f"ledger entries of {trade}")
            if trade.status == Trade.Status.DEDUCTED:
                deducted_by_account[trade.account_id] += trade.beans
        for account in Account.objects.all():
            self.assertGreaterEqual(account.balance, 0)
            self.assertEqual(
                account.balance,
                self.initial_balances[account.pk] - deducted_by_account[account.pk],
                f"balance of account {account.pk} == initial - sum of its deducted trades",
            )
