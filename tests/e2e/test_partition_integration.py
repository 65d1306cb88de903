"""Silent partitions: a worker cut off from RabbitMQ or PostgreSQL, packets dropped, nothing reset.

Two real workers share the load; one of them reaches the service through a
``SilentProxy`` (harness/proxies.py) that goes silent for longer than every
timeout. The other must carry the whole pipeline while the partition lasts (the
relay's lead, the streams, the accounts the cut-off worker had locked), the
invariants must hold afterwards, and the cut-off worker must rejoin when the
network heals. The figures each run measures (time to take over, trades delayed)
are printed; the README quotes them.
"""

import threading
import time
from datetime import timedelta
from urllib.parse import urlsplit

from celery import current_app
from django.db import connections
from django.test import tag
from django.utils import timezone

from harness.environment import test_database_url
from harness.processes import CeleryProcess
from harness.proxies import SilentProxy, url_via
from trades.models import Trade
from trades.services import trade_place

from ..pipeline import PipelineTestCase

# Deadlines short enough for a test, in the same proportions as the defaults.
PARTITION_ENV = {
    "RELIABILITY_BROKER_HEARTBEAT_S": "4",
    "RELIABILITY_CONFIRM_TIMEOUT_S": "3",
    "RELIABILITY_BROKER_IO_TIMEOUT_S": "5",
    "RELIABILITY_RELAY_CLAIM_S": "10",
    "RELIABILITY_RELAY_LEADER_FAIL_S": "4",
    "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_S": "4",
    "DATABASE_KEEPALIVES_IDLE_S": "2",
    "DATABASE_KEEPALIVES_INTERVAL_S": "1",
    "DATABASE_KEEPALIVES_COUNT": "2",
    "DATABASE_TCP_USER_TIMEOUT_MS": "4000",
    "DATABASE_CONNECT_TIMEOUT_S": "3",
}
PARTITION_S = 45.0


class TradeLoad(threading.Thread):
    """Places one trade every ``interval`` seconds (round robin over accounts) until stopped."""

    def __init__(self, accounts: list[int], *, interval: float = 0.1) -> None:
        super().__init__(name="trade-load", daemon=True)
        self.accounts, self.interval = accounts, interval
        self.placed = 0
        self.errors: list[str] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        try:
            while not self._stop_event.wait(self.interval):
                try:
                    trade_place(account_id=self.accounts[self.placed % len(self.accounts)], beans=1)
                    self.placed += 1
                except Exception as exc:  # noqa: BLE001 - recorded, and the test fails on it
                    self.errors.append(repr(exc))
        finally:
            connections.close_all()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=30)


@tag("integration", "partition")
class PartitionIntegrationTests(PipelineTestCase):
    process_env = {**PipelineTestCase.process_env, **PARTITION_ENV}

    def proxy(self, host: str, port: int, *, name: str, drop_packets: bool = False) -> SilentProxy:
        proxy = SilentProxy(host, port, name=name, drop_packets=drop_packets).start()
        self.addCleanup(proxy.close)  # heals (and removes any iptables rule) first
        return proxy

    def load(self, accounts: list[int]) -> TradeLoad:
        load = TradeLoad(accounts)
        self.addCleanup(load.stop)
        load.start()
        return load

    def settled_while_partitioned(self, *, since: float, timeout: float) -> None:
        """Wait until every trade placed ``since`` seconds ago or earlier is settled (the caller has not healed)."""

        def settled() -> bool:
            cutoff = timezone.now() - timedelta(seconds=since)
            return not Trade.objects.filter(status=Trade.Status.PENDING, created_at__lt=cutoff).exists()

        self.wait_for(settled, timeout=timeout, what="the trades placed during the partition to settle")

    def delayed_report(self, started: float, healed: float, label: str) -> dict[str, float | int]:
        """Trades placed during the partition: how many took over a second to settle, and the worst."""
        start = timezone.now() - timedelta(seconds=time.monotonic() - started)
        end = timezone.now() - timedelta(seconds=time.monotonic() - healed)
        settled = Trade.objects.filter(created_at__range=(start, end), settled_at__isnull=False)
        latencies = [
            (trade.settled_at - trade.created_at).total_seconds()
            for trade in settled
            if trade.settled_at is not None
        ]
        figures: dict[str, float | int] = {
            "trades": len(latencies),
            "delayed_over_1s": sum(1 for latency in latencies if latency > 1.0),
            "worst_s": round(max(latencies, default=0.0), 1),
        }
        print(f"\n[partition figures] {label}: {figures}")  # noqa: T201 - quoted in the README
        return figures

    def carried_on_then_rejoined(
        self,
        proxy: SilentProxy,
        partitioned_at: float,
        *,
        load: TradeLoad,
        cut_off: CeleryProcess,
        other: CeleryProcess,
        accounts: list[int],
        label: str,
    ) -> None:
        """The other worker settles everything while the partition lasts; healed, the cut-off one
        carries the pipeline alone; every invariant holds."""
        # Everything placed up to a few seconds ago settles while the partition lasts.
        time.sleep(max(0.0, PARTITION_S - 15 - (time.monotonic() - partitioned_at)))
        self.settled_while_partitioned(since=3, timeout=15)
        proxy.heal()
        healed_at = time.monotonic()
        load.stop()
        self.wait_drained(timeout=90)
        self.delayed_report(partitioned_at, healed_at, label)

        # The cut-off worker rejoined: alone, it relays and consumes new trades.
        other.stop()
        before = Trade.objects.count()
        for n in range(20):
            trade_place(account_id=accounts[n % len(accounts)], beans=1)
        self.wait_drained(timeout=90)
        self.assertTrue(cut_off.alive(), cut_off.log_tail())
        self.assertEqual(load.errors, [])
        self.assert_exactly_once(trades=before + 20)
        self.assert_streams_contiguous()
        self.assert_per_account_order()

    def test_relay_leader_cut_off_from_the_broker_hands_over_and_rejoins(self) -> None:
        broker = urlsplit(current_app.conf.broker_url)
        proxy = self.proxy(broker.hostname or "127.0.0.1", broker.port or 5672, name="broker-proxy")
        accounts = self.create_accounts(8, balance=10_000)
        cut_off = self.start_worker(
            name="cutoff", env={"CELERY_BROKER_URL": url_via(current_app.conf.broker_url, proxy.port)}
        )
        self.wait_for(
            lambda: b"relay loop for default is active" in cut_off.log_path.read_bytes(),
            timeout=30,
            what="the proxied worker to lead the relay",
        )
        other = self.start_worker(name="other")
        self.start_beat()
        load = self.load(accounts)
        self.wait_for(lambda: load.placed >= 30, timeout=30, what="some trades placed")
        self.wait_drained(timeout=60)

        proxy.partition()
        partitioned_at = time.monotonic()
        self.wait_for(
            lambda: b"relay loop for default is active" in other.log_path.read_bytes(),
            timeout=PARTITION_S,
            what="the other worker to take over the relay",
        )
        takeover_s = time.monotonic() - partitioned_at
        print(f"\n[partition figures] broker: relay lead taken over after {takeover_s:.1f}s")  # noqa: T201
        self.carried_on_then_rejoined(
            proxy, partitioned_at, load=load, cut_off=cut_off, other=other, accounts=accounts, label="broker"
        )

    def test_consumer_cut_off_from_the_database_while_holding_account_locks(self) -> None:
        database = urlsplit(test_database_url())
        proxy = self.proxy(
            database.hostname or "127.0.0.1", database.port or 5432, name="db-proxy", drop_packets=True
        )
        accounts = self.create_accounts(2, balance=10_000)
        other = self.start_worker(name="other")
        self.start_beat()
        # The cut-off worker stops inside a deduction's transaction, its account locked, once.
        cut_off = self.start_worker(
            name="cutoff",
            env={
                "DATABASE_URL": url_via(test_database_url(), proxy.port),
                "RELIABILITY_RELAY_LOOP": "false",
                "RELIABILITY_FAULT_INJECTION": "true",
                "RELIABILITY_FAULTS": "consume.after_handler=sleep12:1",
                "RELIABILITY_FAULT_DIR": str(other.workdir / "faults"),
            },
        )
        load = self.load(accounts)
        self.wait_for(
            lambda: b"fault point consume.after_handler: sleeping" in cut_off.log_path.read_bytes(),
            timeout=60,
            what="the proxied worker to hold an account's locks",
        )
        proxy.partition()
        partitioned_at = time.monotonic()
        # The server ends the silent session (idle in transaction) and its locks go with it:
        # the other worker deducts from the same accounts while the partition lasts.
        self.carried_on_then_rejoined(
            proxy,
            partitioned_at,
            load=load,
            cut_off=cut_off,
            other=other,
            accounts=accounts,
            label="database",
        )
