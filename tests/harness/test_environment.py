"""The environment scrub, leftovers of dead runs and free ports: what every tool's isolation rests on."""

import os
import socket
import subprocess
import sys
from unittest import mock

from django.test import SimpleTestCase

from harness.environment import REPO, foreign, isolated_env
from harness.ports import NoFreePorts, free_ports
from harness.processes import orphans


class ScrubTests(SimpleTestCase):
    def test_what_could_point_a_run_at_a_developers_data_is_foreign(self) -> None:
        for key in ("DATABASE_URL", "BEANS_DATABASE_URL", "CELERY_BROKER_URL", "DJANGO_SETTINGS_MODULE",
                    "RELIABILITY_REDIS_URL", "TRADES_QUEUE_PARTITIONS", "API_RATE_LIMIT_REDIS_URL", "WEB_CONCURRENCY",
                    "PGAPPNAME"):  # fmt: skip
            self.assertTrue(foreign(key), key)
        for key in ("PATH", "HOME", "LANG", "PGPASSFILE", "TMPDIR"):
            self.assertFalse(foreign(key), key)

    def test_a_run_of_its_own_sees_its_services_and_the_defaults_only(self) -> None:
        developer = {
            "DATABASE_URL": "postgres:///mine",
            "RELIABILITY_BATCH_SIZE": "7",
            "CELERY_X": "y",
            "KEEP": "me",
        }
        with mock.patch.dict(os.environ, developer):
            env = isolated_env(
                database_url="postgres:///run",
                broker_url="amqp:///run",
                redis_url="redis:///9",
                PGAPPNAME="run",
            )
        self.assertEqual(env["DATABASE_URL"], "postgres:///run")
        self.assertEqual(env["CELERY_BROKER_URL"], "amqp:///run")
        self.assertEqual(env["RELIABILITY_REDIS_URL"], env["API_RATE_LIMIT_REDIS_URL"])
        self.assertEqual((env["DJANGO_SETTINGS_MODULE"], env["PGAPPNAME"]), ("project.settings", "run"))
        self.assertEqual(
            env["PYTHONPATH"], str(REPO), "python -m of the checkout's packages works from anywhere"
        )
        self.assertNotIn("RELIABILITY_BATCH_SIZE", env)
        self.assertNotIn("CELERY_X", env)
        self.assertEqual(env["KEEP"], "me")


class OrphansTests(SimpleTestCase):
    def test_names_carrying_the_pid_of_a_process_now_gone_are_orphans(self) -> None:
        gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout.strip()  # fmt: skip
        names = [f"test-{os.getpid()}", f"test-{gone}", "test-x", f"other-{gone}"]
        self.assertEqual(orphans(names, r"test-(\d+)"), [f"test-{gone}"])


class FreePortsTests(SimpleTestCase):
    def test_finds_a_run_of_free_ports_and_skips_a_taken_one(self) -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            port = taken.getsockname()[1]
            base = free_ports(3, start=port, stop=port + 40)
        self.assertGreater(base, port, "the taken port is not in the run")

    def test_says_so_when_there_is_none(self) -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            port = taken.getsockname()[1]
            with self.assertRaises(NoFreePorts):
                free_ports(1, start=port, stop=port)
