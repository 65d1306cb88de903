"""Test runner: a private RabbitMQ vhost per run, so tests never share queues with a demo.

Workers started by the integration tests inherit the vhost through
``CELERY_BROKER_URL`` and the test database through ``DATABASE_URL``.

The vhost (``test-<pid>``) is deleted whatever ends the run: at teardown, at exit if
the run failed before teardown (an import error, a database that could not be made),
and on SIGTERM (turned into ``KeyboardInterrupt``, so the teardown runs). A vhost left by
a run that was SIGKILLed is recognised by its dead pid and deleted when the next run
starts. A vhost costs the broker queues and file descriptors (README, "Broker footprint").
Vhosts and permissions go through the broker's management API (``harness.broker_admin``).

The unit tier (``make test-fast``) runs without RabbitMQ: a run that excludes the ``broker`` tag
(every test that needs the broker carries it; ``tests.pipeline.PipelineTestCase`` does, and so
every test with real workers) makes no vhost and points the broker URLs at a closed port, so a
test that needs the broker but lacks the tag fails at once (connection refused) instead of
waiting, or reaching a broker that runs for something else.
"""

import atexit
import contextlib
import os
import signal
from typing import Any

from celery import current_app
from django.conf import settings
from django.db import connections
from django.test.runner import DiscoverRunner

from harness.broker_admin import BrokerAdminError, broker_admin
from harness.processes import orphans
from project.environment import broker_user, url_with_path
from reliability.produce.publisher import publisher

TEST_REDIS_URL = "redis://127.0.0.1:6379/13"
# The tag of the tests that need RabbitMQ; a run that excludes it makes no vhost.
BROKER_TAG = "broker"
# The unit tier's broker: nothing listens on port 1 (binding it takes root), so a connection is
# refused at once; the vhost does not exist either, should anything reach a real broker.
NO_BROKER_URL = "amqp://guest:guest@127.0.0.1:1/no-broker-in-this-run"
NO_BROKER_MANAGEMENT_URL = "http://guest:guest@127.0.0.1:1"


def vhosts_stale_delete() -> list[str]:
    """Delete the ``test-<pid>`` vhosts of test runs that no longer run (SIGKILLed mid-run)."""
    deleted = []
    admin = broker_admin()
    for vhost in orphans(admin.vhosts(), r"test-(\d+)"):
        with contextlib.suppress(BrokerAdminError):
            admin.vhost_delete(vhost)
        deleted.append(vhost)
    return deleted


def _sigterm_interrupts(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


class PipelineTestRunner(DiscoverRunner):
    vhost = ""

    def setup_test_environment(self, **kwargs: Any) -> None:
        super().setup_test_environment(**kwargs)
        # Short snowflake leases: after a Redis flush a new process waits at most one TTL.
        os.environ.setdefault("RELIABILITY_SNOWFLAKE_LEASE_TTL_S", "3")
        # A Redis database of the tests' own, so a test may flush it.
        os.environ.setdefault("RELIABILITY_REDIS_URL", TEST_REDIS_URL)
        # The API's rate-limit counters too, here and in the web tiers the tests start.
        os.environ.setdefault("API_RATE_LIMIT_REDIS_URL", TEST_REDIS_URL)
        settings.API_RATE_LIMIT_REDIS_URL = os.environ["API_RATE_LIMIT_REDIS_URL"]
        self._idle_in_transaction_timeout_lift()
        if BROKER_TAG in self.exclude_tags:
            self._broker_unreachable()
        else:
            self._vhost_create()

    def _broker_unreachable(self) -> None:
        """Point every broker URL of this process and its subprocesses at the closed port."""
        os.environ["CELERY_BROKER_URL"] = NO_BROKER_URL
        os.environ["RABBITMQ_MANAGEMENT_URL"] = NO_BROKER_MANAGEMENT_URL
        settings.CELERY_BROKER_URL = NO_BROKER_URL
        current_app.conf.broker_url = NO_BROKER_URL
        publisher().close()

    def _vhost_create(self) -> None:
        """Make this run's vhost (deleting those of dead runs first) and point the broker URL at it."""
        vhosts_stale_delete()
        self.vhost = f"test-{os.getpid()}"
        # Registered before the vhost exists: whatever fails from here on, it goes.
        atexit.register(self._vhost_delete)
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _sigterm_interrupts)
        broker_admin().vhost_add(self.vhost)
        broker_admin().permissions_set(self.vhost, broker_user(), ".*", ".*", ".*")
        url = url_with_path(settings.CELERY_BROKER_URL, self.vhost)
        os.environ["CELERY_BROKER_URL"] = url
        current_app.conf.broker_url = url
        publisher().close()

    def _vhost_delete(self) -> None:
        """Delete this run's vhost if it is still there (idempotent; never raises)."""
        if self.vhost:
            with contextlib.suppress(BrokerAdminError):
                broker_admin().vhost_delete(self.vhost)
            self.vhost = ""

    @staticmethod
    def _idle_in_transaction_timeout_lift() -> None:
        """No idle-in-transaction deadline for this process's own sessions (its subprocesses keep it).

        A ``TestCase`` runs each test inside one transaction, and a test may wait far longer
        than the production deadline for a worker or the broker without a query; the server
        would end its session mid-test. Workers, beat and commands the tests start read the
        settings afresh, with the deadline the tests are about.
        """
        for alias in connections:
            options = connections[alias].settings_dict["OPTIONS"]
            # libpq's options: a later -c overrides an earlier one.
            options["options"] = (
                f"{options.get('options', '')} -c idle_in_transaction_session_timeout=0".strip()
            )
            connections[alias].close()

    def teardown_test_environment(self, **kwargs: Any) -> None:
        publisher().close()
        try:
            vhost, self.vhost = self.vhost, ""
            if vhost:
                broker_admin().vhost_delete(vhost)
        finally:
            super().teardown_test_environment(**kwargs)
