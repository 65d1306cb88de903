"""The library's settings: defaults of its own, the environment parsed by type, and the system
checks that refuse an unsafe configuration (in ``manage.py check`` and in a starting worker)."""

import os
import subprocess
import sys
from typing import Any

from django.conf import settings as django_settings
from django.core.checks import run_checks
from django.core.exceptions import ImproperlyConfigured
from django.test import SimpleTestCase, override_settings, tag

from harness.processes import REPO
from reliability.conf import DEFAULTS, environment_settings
from reliability.conf import settings as reliability_settings

KEY = "k" * 40


def reliability_check_ids() -> list[str]:
    return sorted(message.id or "" for message in run_checks(tags=["reliability"]))


class DefaultsTests(SimpleTestCase):
    def test_a_setting_the_project_does_not_set_has_the_librarys_default(self) -> None:
        with override_settings():
            delattr(django_settings, "RELIABILITY_RELAY_WINDOW")
            delattr(django_settings, "RELIABILITY_FAULT_DIR")
            self.assertFalse(hasattr(django_settings, "RELIABILITY_RELAY_WINDOW"))
            self.assertEqual(
                reliability_settings.RELIABILITY_RELAY_WINDOW, DEFAULTS["RELIABILITY_RELAY_WINDOW"]
            )
            self.assertTrue(reliability_settings.RELIABILITY_FAULT_DIR.endswith("reliability-faults"))

    def test_the_project_value_wins_and_other_settings_pass_through(self) -> None:
        with override_settings(RELIABILITY_RELAY_WINDOW=7):
            self.assertEqual(reliability_settings.RELIABILITY_RELAY_WINDOW, 7)
        self.assertEqual(reliability_settings.DATABASES, django_settings.DATABASES)

    def test_the_signing_key_id_defaults_to_the_first_key(self) -> None:
        with override_settings(RELIABILITY_SIGNING_KEYS={"a": KEY, "b": KEY}):
            delattr(django_settings, "RELIABILITY_SIGNING_KEY_ID")
            self.assertEqual(reliability_settings.RELIABILITY_SIGNING_KEY_ID, "a")

    def test_a_mutable_default_is_a_copy(self) -> None:
        with override_settings():
            delattr(django_settings, "RELIABILITY_DATABASES")
            reliability_settings.RELIABILITY_DATABASES.append("elsewhere")
            self.assertEqual(reliability_settings.RELIABILITY_DATABASES, ["default"])


class EnvironmentSettingsTests(SimpleTestCase):
    def test_values_are_parsed_as_their_defaults_types(self) -> None:
        parsed = environment_settings(
            {
                "RELIABILITY_RELAY_LOOP": "off",
                "RELIABILITY_RELAY_WINDOW": "8",
                "RELIABILITY_CONFIRM_TIMEOUT_S": "2.5",
                "RELIABILITY_ID_GENERATOR": "snowflake",
                "RELIABILITY_SNOWFLAKE_WORKER_ID": "12",
                "RELIABILITY_SIGNING_KEYS": f"old:{KEY}, new:{KEY}",
                "RELIABILITY_DEDUPE_WINDOW_S": "",  # empty: the default applies
                "RELIABILITY_DATABASES": "other",  # never from the environment
                "UNRELATED": "x",
            }
        )
        self.assertEqual(
            parsed,
            {
                "RELIABILITY_RELAY_LOOP": False,
                "RELIABILITY_RELAY_WINDOW": 8,
                "RELIABILITY_CONFIRM_TIMEOUT_S": 2.5,
                "RELIABILITY_ID_GENERATOR": "snowflake",
                "RELIABILITY_SNOWFLAKE_WORKER_ID": 12,
                "RELIABILITY_SIGNING_KEYS": {"old": KEY.encode(), "new": KEY.encode()},
            },
        )

    def test_a_value_that_does_not_parse_names_the_variable(self) -> None:
        for name, raw in (
            ("RELIABILITY_RELAY_LOOP", "maybe"),
            ("RELIABILITY_RELAY_WINDOW", "eight"),
            ("RELIABILITY_CONFIRM_TIMEOUT_S", "soon"),
        ):
            with self.subTest(name=name), self.assertRaisesMessage(ImproperlyConfigured, name):
                environment_settings({name: raw})


class SystemCheckTests(SimpleTestCase):
    def test_this_projects_configuration_passes(self) -> None:
        self.assertEqual(reliability_check_ids(), [])

    def test_each_unsafe_setting_is_an_error_naming_it(self) -> None:
        cases: dict[str, dict[str, Any]] = {
            "reliability.E001": {"RELIABILITY_SIGNING_KEYS": {}},
            "reliability.E002": {
                "RELIABILITY_SIGNING_KEYS": {"k": "short"},
                "RELIABILITY_SIGNING_KEY_ID": "k",
            },
            "reliability.E003": {
                "RELIABILITY_SIGNING_KEYS": {"k": KEY},
                "RELIABILITY_SIGNING_KEY_ID": "gone",
            },
            "reliability.E004": {"RELIABILITY_DEDUPE_WINDOW_S": 60.0},
            "reliability.E005": {"RELIABILITY_RELAY_CLAIM_S": 1.0},
            "reliability.E006": {"RELIABILITY_ID_GENERATOR": "uuid4"},
            "reliability.E008": {"RELIABILITY_DATABASES": ["default", "nowhere"]},
            "reliability.E009": {"RELIABILITY_DATABASE_WAIT_MAX_S": 240.0},
            "reliability.E010": {"RELIABILITY_PARTITIONS_AHEAD": 1},
        }
        for check_id, overrides in cases.items():
            with self.subTest(check_id), override_settings(**overrides):
                messages = [m for m in run_checks(tags=["reliability"]) if m.id == check_id]
                self.assertTrue(messages, f"{check_id} for {overrides}")
                for message in messages:
                    self.assertTrue(message.is_serious())
                    self.assertTrue(any(name in message.msg for name in overrides), message.msg)

    def test_ids_that_do_not_begin_with_their_time_are_a_warning(self) -> None:
        # They go to the default partitions, which retention empties row by row.
        with override_settings(RELIABILITY_ID_GENERATOR="database"):
            self.assertEqual(reliability_check_ids(), ["reliability.W002"])

    def test_fault_injection_is_a_warning(self) -> None:
        with override_settings(RELIABILITY_FAULT_INJECTION=True):
            self.assertEqual(reliability_check_ids(), ["reliability.W001"])


@tag("integration")
class WorkerRefusesUnsafeConfigurationTests(SimpleTestCase):
    def worker_run(self, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "project",
                "worker",
                "-l",
                "warning",
                "--concurrency",
                "1",
            ],
            cwd=REPO,
            env={**os.environ, "DJANGO_SETTINGS_MODULE": "project.settings", **env},
            capture_output=True,
            text=True,
            timeout=120,
        )

    def test_a_worker_with_an_unsafe_configuration_does_not_start(self) -> None:
        done = self.worker_run(RELIABILITY_RELAY_CLAIM_S="1")
        self.assertNotEqual(done.returncode, 0)
        self.assertIn("reliability.E005", done.stderr)
        self.assertIn("the worker will not start", done.stderr)

    def test_a_worker_whose_relay_would_go_through_a_transaction_pooler_does_not_start(self) -> None:
        # The relay's advisory lock and LISTEN need a session of their own (README, "Connection
        # pooling"); the web tier may go through pgbouncer, the workers may not.
        done = self.worker_run(DATABASE_POOLER="pgbouncer-transaction")
        self.assertNotEqual(done.returncode, 0)
        self.assertIn("relay loop needs a session of its own", done.stderr)
        self.assertIn("the worker will not start", done.stderr)
