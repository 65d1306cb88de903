"""Test runner: a private RabbitMQ vhost per run, so tests never share queues with a demo.

Workers started by the integration tests inherit the vhost through
``CELERY_BROKER_URL`` and the test database through ``DATABASE_URL``.
"""

import os
import shutil
import subprocess
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from celery import current_app
from django.conf import settings
from django.test.runner import DiscoverRunner

from reliability.publisher import publisher

TEST_REDIS_URL = "redis://127.0.0.1:6379/13"


def rabbitmqctl(*args: str) -> None:
    if shutil.which("rabbitmqctl") is None:
        raise RuntimeError("rabbitmqctl not found: install rabbitmq-server (apt-get install rabbitmq-server)")
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


class PipelineTestRunner(DiscoverRunner):
    vhost = ""

    def setup_test_environment(self, **kwargs: Any) -> None:
        super().setup_test_environment(**kwargs)
        # Short snowflake leases: after a Redis flush a new process waits at most one TTL.
        os.environ.setdefault("RELIABILITY_SNOWFLAKE_LEASE_TTL_S", "3")
        # A Redis database of the tests' own, so a test may flush it.
        os.environ.setdefault("RELIABILITY_REDIS_URL", TEST_REDIS_URL)
        self.vhost = f"test-{os.getpid()}"
        rabbitmqctl("add_vhost", self.vhost)
        rabbitmqctl("set_permissions", "-p", self.vhost, "guest", ".*", ".*", ".*")
        parts = urlsplit(settings.CELERY_BROKER_URL)
        url = urlunsplit(parts._replace(path="/" + quote(self.vhost, safe="")))
        os.environ["CELERY_BROKER_URL"] = url
        current_app.conf.broker_url = url
        publisher().close()

    def teardown_test_environment(self, **kwargs: Any) -> None:
        publisher().close()
        try:
            rabbitmqctl("delete_vhost", self.vhost)
        finally:
            super().teardown_test_environment(**kwargs)
