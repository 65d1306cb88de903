"""A database outage longer than a message's delivery budget: no message is dead-lettered.

The worker reaches PostgreSQL through a proxy that can play a server that is down (every
connection closed, each new one refused). Deliveries that fail on it wait for the database to
answer before going back to the queue (``RELIABILITY_DATABASE_WAIT_MAX_S``), so the outage
costs each message one delivery, not twenty: with the tests' requeue pause (0.05 s) the broker
used to dead-letter them on the delivery limit within two seconds, and their trades waited for
a human to replay them.
"""

import time
from urllib.parse import urlsplit

from django.test import tag

from harness.environment import test_database_url
from harness.proxies import SilentProxy, url_via
from reliability.models import DeadLetter
from trades.services import trade_place

from ..pipeline import PipelineTestCase

OUTAGE_S = 8.0  # four times what 20 deliveries at the tests' pause used to last


@tag("integration")
class DatabaseOutageIntegrationTests(PipelineTestCase):
    def test_deliveries_wait_out_a_database_outage_and_nothing_is_dead_lettered(self) -> None:
        database = urlsplit(test_database_url())
        proxy = SilentProxy(database.hostname or "127.0.0.1", database.port or 5432, name="db-proxy").start()
        self.addCleanup(proxy.close)
        accounts = self.create_accounts(4, balance=10_000)
        worker = self.start_worker(
            env={
                "DATABASE_URL": url_via(test_database_url(), proxy.port),
                # Messages reach the broker from this process's fast path, not a relay behind the proxy.
                "RELIABILITY_RELAY_LOOP": "false",
                "RELIABILITY_DATABASE_WAIT_MAX_S": "30",
            }
        )
        for n in range(8):
            trade_place(account_id=accounts[n % 4], beans=10)
        self.wait_drained(timeout=60)  # the worker works through the proxy

        proxy.refuse()
        down_at = time.monotonic()
        for n in range(40):
            trade_place(account_id=accounts[n % 4], beans=10)
        self.wait_for(
            lambda: b"failed (delivery 1)" in worker.log_path.read_bytes(),
            timeout=30,
            what="a delivery to fail on the database that is down",
        )
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
        proxy.heal()

        self.wait_drained(timeout=90)
        self.assertTrue(worker.alive(), worker.log_tail())
        self.assertEqual(DeadLetter.objects.count(), 0, self.logs())
        self.assert_exactly_once(trades=48)
        self.assert_streams_contiguous()
        self.assert_per_account_order()
