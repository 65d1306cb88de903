"""The test runner's unit tier: a run that leaves out the ``broker`` tag has no broker to reach.

A test that needs RabbitMQ but lacks the tag must fail at once, loudly, and never reach a broker
that runs for something else (a demo, a soak). The tier is set up in a process of its own, so
this run's vhost and URLs are left alone.
"""

import subprocess
import sys
import time

from django.test import SimpleTestCase

from harness.environment import subprocess_env
from harness.processes import REPO

# Set up the unit tier as `manage.py test --exclude-tag broker` does, then do what an untagged
# test that needs the broker would: publish, and declare the topology.
UNIT_TIER_PUBLISH = """
import django
django.setup()
from celery import current_app
from reliability.exceptions import BrokerUnavailable
from reliability.produce.publisher import publisher
from tests.runner import NO_BROKER_URL, PipelineTestRunner

PipelineTestRunner(exclude_tags=["broker"]).setup_test_environment()
assert current_app.conf.broker_url == NO_BROKER_URL, current_app.conf.broker_url
for attempt in (
    lambda: publisher().publish(task_name="beans.deduct", queue="beans", message_id="m", envelope={}),
    lambda: publisher().topology_declare(),
):
    try:
        attempt()
    except BrokerUnavailable as refused:
        print("refused:", refused)
    else:
        raise SystemExit("reached a broker")
"""

# Far above a refused connection (milliseconds), far below a hang.
LOUD_WITHIN_S = 30


class UnitTierTests(SimpleTestCase):
    def test_a_test_that_needs_the_broker_fails_at_once_without_the_broker_tag(self) -> None:
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-c", UNIT_TIER_PUBLISH],
            cwd=REPO,
            env=subprocess_env(),
            capture_output=True,
            text=True,
            timeout=LOUD_WITHIN_S * 2,
        )
        elapsed = time.monotonic() - started
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        self.assertEqual(done.stdout.count("refused:"), 2, done.stdout)
        self.assertLess(elapsed, LOUD_WITHIN_S)
