"""Kill -9 the quorum-queue leader of a 3-node RabbitMQ cluster mid-stream: nothing lost, nothing doubled.

The nemesis of ``../shared/reliability.md`` on a real cluster: a real worker and beat
consume while the test process places trades (each published with confirms by the
after-commit fast path); a third of the way in, the node leading the ``beans`` quorum
queue is SIGKILLed. The clients were connected to it (it is the first broker URL, and
the queues' leader is placed on the declaring client's node), so the publisher, the
worker and beat must fail over to a surviving node. The node is restarted while trades
keep coming, then the pipeline must drain with every invariant intact.
"""

import os
import re
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from urllib.parse import urlsplit

from celery import current_app
from django.test import tag

from beans.models import LedgerEntry
from harness.clusters import ClusterError
from harness.rabbitmq import queue_names
from harness.rabbitmq_cluster import RabbitCluster
from reliability.models import MessageLog, OutboxMessage, ReconcileRun, StreamWatermark
from reliability.produce.publisher import publisher
from trades.models import Trade
from trades.services import trade_place

from ..pipeline import PipelineTestCase

# 5,000 by default: a few minutes, as each trade takes ~30 ms, most of it waiting for the
# quorum queue's publisher confirm. A shorter CI tier can set CLUSTER_TEST_TRADES.
TRADES = int(os.environ.get("CLUSTER_TEST_TRADES", "5000"))
ACCOUNTS = 20
BEANS = 10
CONSUMER_TIMEOUT_MS = 10_000
# The killed node stays down at least this long, while trades keep coming.
MIN_DOWNTIME_S = 10.0


def use_broker_url(url: str) -> None:
    """Point this process and the workers it starts (they inherit the environment) at ``url``."""
    os.environ["CELERY_BROKER_URL"] = url
    current_app.conf.broker_url = url
    publisher().close()


@tag("cluster")
class QuorumLeaderKilledTests(PipelineTestCase):
    cluster: RabbitCluster
    cluster_urls: str

    # A load test: the harness's 1 s heartbeats (8 streams each way) would be half of the
    # worker's tasks, and a 1 s reconciler grace republishes every message that merely
    # waits behind the backlog. Production-like periods; a lost message still heals in time.
    process_env = {
        **PipelineTestCase.process_env,
        "RELIABILITY_HEARTBEAT_INTERVAL_S": "5",
        "RELIABILITY_RECONCILE_INTERVAL_S": "5",
        "RELIABILITY_RECONCILE_GRACE_S": "30",
    }

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        RabbitCluster.reap_stale()
        cls.cluster = RabbitCluster.private()
        # Low enough for the consumer-timeout test, far above any delivery of the load test.
        cls.cluster.env["RABBITMQ_CLUSTER_CONSUMER_TIMEOUT_MS"] = str(CONSUMER_TIMEOUT_MS)
        # Registered before `up`, so a cluster that started only half-way is stopped too.
        cls.addClassCleanup(cls.cluster.down)
        cls.cluster_urls = cls.cluster.up()

    def setUp(self) -> None:
        # Before super().setUp(): it declares the topology through the publisher. The
        # cleanup restoring the run's vhost URL runs last, after the queues were purged.
        run_url = current_app.conf.broker_url
        self.addCleanup(use_broker_url, run_url)
        use_broker_url(self.cluster_urls)
        super().setUp()

    def amqp_port(self, node: str) -> int | None:
        urls = self.cluster_urls.split(";")
        return urlsplit(urls[self.cluster.nodes.index(self.cluster.short(node))]).port

    def test_quorum_leader_killed_mid_stream_loses_nothing_and_applies_once(self) -> None:
        accounts = self.create_accounts(ACCOUNTS, balance=TRADES // ACCOUNTS * BEANS * 2)
        worker = self.start_worker(concurrency=2)
        beat = self.start_beat()
        self.assertEqual(len(self.cluster.members_of("beans")), 3, "beans is replicated on all three nodes")

        started = time.monotonic()
        killed_at = 0.0
        leader = ""
        clients_on_leader = 0
        restart: Future[float] | None = None

        def restart_node() -> float:
            self.cluster.restart(leader)
            return time.monotonic()

        with ThreadPoolExecutor(max_workers=1) as executor:
            for n in range(TRADES):
                if n == TRADES // 3:
                    leader = self.cluster.leader_of("beans")
                    clients_on_leader = self.connections_on(leader)
                    self.cluster.kill(leader)
                    killed_at = time.monotonic()
                if (
                    restart is None
                    and n >= 2 * TRADES // 3
                    and killed_at
                    and time.monotonic() - killed_at >= MIN_DOWNTIME_S
                ):
                    # In the background: trades keep coming while the node boots and catches up.
                    restart = executor.submit(restart_node)
                trade_place(account_id=accounts[n % ACCOUNTS], beans=BEANS)
            placed_at = time.monotonic()
            if restart is None:
                time.sleep(max(0.0, MIN_DOWNTIME_S - (time.monotonic() - killed_at)))
                restart = executor.submit(restart_node)
            restarted_at = restart.result(timeout=300)

        self.wait_drained(timeout=300)
        drained_at = time.monotonic()

        deductions = Counter(
            LedgerEntry.objects.filter(kind=LedgerEntry.Kind.DEDUCTION).values_list("message_id", flat=True)
        )
        trades = list(Trade.objects.values_list("deduction_message_id", flat=True))
        lost = sum(1 for message_id in trades if deductions[message_id] == 0)
        doubled = sum(1 for count in deductions.values() if count > 1)
        retried = OutboxMessage.objects.filter(attempts__gt=0).count()
        gaps = sum(StreamWatermark.objects.values_list("gaps_found", flat=True))
        republished = sum(ReconcileRun.objects.values_list("republished", flat=True))
        escalated = sum(ReconcileRun.objects.values_list("escalated", flat=True))
        duplicates = sum(MessageLog.objects.values_list("redeliveries", flat=True))
        brokers = re.findall(r"Connected to (amqp://\S+)", worker.log_path.read_text(errors="replace"))
        ok = Trade.objects.filter(status=Trade.Status.DEDUCTED).count()
        sys.stderr.write(
            "\n".join(
                [
                    "",
                    f"cluster nemesis: SIGKILL {leader} (leader of beans; {clients_on_leader} client "
                    f"connections on it) at {killed_at - started:.1f}s into the stream",
                    f"  worker connected to: {' -> '.join(brokers)}",
                    f"  all {TRADES} placed at {placed_at - started:.1f}s; node back at "
                    f"{restarted_at - started:.1f}s; drained {drained_at - killed_at:.1f}s after the kill "
                    f"({drained_at - started:.1f}s after the first trade)",
                    f"  attempted {TRADES} / ok {ok} / lost {lost} / duplicated effects {doubled}; "
                    f"duplicate deliveries suppressed {duplicates}",
                    f"  fast-path publishes left to the relay {retried}; gaps seen {gaps}, republished by "
                    f"the reconciler {republished}, escalated {escalated}",
                    "",
                ]
            )
        )

        self.assertGreater(clients_on_leader, 0, "the killed node had clients that had to fail over")
        self.assertEqual(lost, 0)
        self.assertEqual(doubled, 0)
        self.assert_exactly_once(trades=TRADES)
        self.assertEqual(ok, TRADES, "every trade deducted (balances suffice)")
        self.assert_streams_contiguous()

        # I8: with beat stopped nothing new arrives; every project queue must empty
        # (ready + unacked). list_queues reports quorum-queue counts with a lag: poll.
        beat.stop()
        project_queues = queue_names()
        try:
            self.cluster.wait_for(
                lambda: all(self.cluster.message_counts().get(name) == 0 for name in project_queues),
                timeout=90,
                what="every project queue on the cluster to be empty",
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {self.last_counts(project_queues)}\n{self.logs()}") from None

        # The restarted node is a replica of beans again, following the new leader.
        self.assertIn(leader, self.cluster.members_of("beans"))
        self.cluster.wait_for(
            lambda: self.cluster.raft_states("beans").get(leader) == "follower",
            timeout=60,
            what=f"{leader} to follow the beans leader again",
        )

    def connections_on(self, node: str) -> int:
        """Count the client connections to ``node``'s AMQP port."""
        rows = self.cluster.ctl_json("list_connections", "port")
        return sum(1 for row in rows if int(row["port"]) == self.amqp_port(node))

    def last_counts(self, queues: list[str]) -> object:
        try:
            counts = self.cluster.message_counts()
        except ClusterError as exc:
            return exc
        return {name: counts.get(name) for name in queues}

    def test_delivery_outliving_the_consumer_timeout_is_redelivered_and_applied_once(self) -> None:
        (account,) = self.create_accounts(1, balance=1000)
        worker = self.start_worker(
            env={
                "RELIABILITY_FAULT_INJECTION": "1",
                # The first delivery outlives consumer_timeout (10 s, checked every second).
                "RELIABILITY_FAULTS": "consume.before_handler=sleep25:1",
                "RELIABILITY_FAULT_DIR": tempfile.mkdtemp(prefix="faults-"),
            }
        )
        trade, _ = trade_place(account_id=account, beans=100)
        # The broker closes the channel of a delivery that outlived consumer_timeout; with
        # broker_channel_error_retry the consumer reconnects and the worker carries on.
        self.wait_for(
            lambda: "timed out" in worker.log_path.read_text(errors="replace"),
            timeout=120,
            what="the broker to time out the first delivery",
        )
        self.wait_drained(timeout=180)
        self.assertTrue(worker.alive(), f"the worker survived the channel close:\n{worker.log_tail()}")
        self.assert_exactly_once(trades=1)
        log = worker.log_path.read_text(errors="replace")
        self.assertIn("sleeping 25.0s", log)
        self.assertIn("PRECONDITION_FAILED", log, "the broker closed the channel of the late delivery")
        # The first attempt is cancelled with the connection (worker_cancel_long_running_tasks_on_
        # connection_loss) before its commit, or commits and its redelivered copy is skipped.
        self.assertEqual(LedgerEntry.objects.filter(message_id=trade.deduction_message_id).count(), 1)
        self.assertEqual(
            MessageLog.objects.filter(handler="beans.deduct", message_id=trade.deduction_message_id).count(),
            1,
        )
