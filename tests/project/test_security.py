"""Security: JSON-only messages, production settings, least-privilege broker users.

Each test attacks the guarantee itself rather than the configuration that is meant to
give it: a pickle that would run code when loaded, ``check --deploy`` in a subprocess
with production environment variables, a RabbitMQ user that tries what it must not.
"""

import contextlib
import importlib.util
import io
import json
import os
import pickle
import secrets
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import amqp
from amqp.exceptions import AccessRefused
from celery import current_app
from django.conf import settings
from django.test import SimpleTestCase, TestCase, override_settings, tag
from kombu import Connection
from kombu.exceptions import ContentDisallowed
from kombu.serialization import loads, prepare_accept_content

from beans.models import LedgerEntry
from harness.broker_admin import broker_admin
from harness.environment import subprocess_env
from harness.processes import REPO
from harness.rabbitmq import queue_message_counts, rabbitmq_users_run
from reliability.envelope import outbox_envelope
from reliability.models import DeadLetter, OutboxMessage
from reliability.ops.dead_letters import dead_letter_from_broker
from tests.pipeline import PipelineTestCase
from trades.models import Trade
from trades.services import trade_place

PICKLE = "application/x-python-serialize"


class RunsCodeWhenUnpickled:
    """A pickle payload with a visible side effect: loading it creates ``path`` (a directory).

    Any code could stand in for ``os.mkdir``: that is why a consumer must never unpickle
    what it receives. The directory's existence is the proof that it was unpickled.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.mkdir, (self.path,))


def marker_path(test: SimpleTestCase) -> Path:
    directory = Path(tempfile.mkdtemp(prefix="unpickled-"))
    test.addCleanup(shutil.rmtree, directory, ignore_errors=True)
    return directory / "the-pickle-ran"


class JsonOnlySerializationTests(SimpleTestCase):
    def test_tasks_results_and_events_are_json_only(self) -> None:
        conf = current_app.conf
        self.assertEqual(
            (conf.task_serializer, conf.result_serializer, conf.event_serializer), ("json", "json", "json")
        )
        self.assertEqual(list(conf.accept_content), ["json"])
        self.assertEqual(list(conf.result_accept_content), ["json"])
        self.assertEqual(current_app.backend.accept, {"application/json"})

    def test_the_probe_runs_code_when_pickle_is_accepted(self) -> None:
        # The control: without the accept list, loading the bytes below runs code.
        marker = marker_path(self)
        loads(pickle.dumps(RunsCodeWhenUnpickled(str(marker))), PICKLE, "binary", accept={PICKLE})
        self.assertTrue(marker.exists())

    def test_the_app_refuses_to_decode_pickle(self) -> None:
        marker = marker_path(self)
        for accept in (current_app.conf.accept_content, current_app.conf.result_accept_content):
            with self.subTest(accept=accept), self.assertRaises(ContentDisallowed):
                loads(
                    pickle.dumps(RunsCodeWhenUnpickled(str(marker))),
                    PICKLE,
                    "binary",
                    accept=prepare_accept_content(accept),
                )
        self.assertFalse(marker.exists(), "the pickle was loaded")


class BinaryDeadLetterTests(TestCase):
    databases = "__all__"

    def test_a_pickled_body_is_recorded_escaped_and_never_loaded(self) -> None:
        # PostgreSQL text cannot hold NUL: an unrecordable body would block the drain for good.
        marker = marker_path(self)
        body = pickle.dumps(RunsCodeWhenUnpickled(str(marker)))
        self.assertIn(b"\x00", body, "a pickle frame header holds NUL bytes: the case at stake")
        message_id = uuid.uuid4()
        death = {"reason": "rejected", "queue": "beans", "count": 1}
        dead_letter_from_broker(
            body,
            {
                "application_headers": {"task": "beans.deduct", "x-death": [death]},
                "content_type": PICKLE,
                "correlation_id": str(message_id),
            },
        )
        letter = DeadLetter.objects.using(settings.BEANS_DATABASE).get(message_id=message_id)
        self.assertEqual(letter.reason, DeadLetter.Reason.REJECTED)
        self.assertNotIn("\x00", letter.body)
        self.assertIn("\\x00", letter.body)
        self.assertIsNone(letter.envelope)
        self.assertFalse(marker.exists())


@tag("integration")
class PickleRefusedIntegrationTests(PipelineTestCase):
    @override_settings(RELIABILITY_RELAY_FAST_PATH=False)  # the JSON copy waits in the outbox
    def test_a_pickled_task_is_dead_lettered_by_a_real_worker_and_never_loaded(self) -> None:
        (account,) = self.create_accounts(1, balance=1000)
        trade, _ = trade_place(account_id=account, beans=100)
        outbox = OutboxMessage.objects.get(message_id=trade.deduction_message_id)
        marker = marker_path(self)
        # A well-formed Celery message for a real deduction, pickled, with code that runs on load.
        message = current_app.amqp.as_task_v2(
            str(outbox.message_id), outbox.task_name, args=(outbox_envelope(outbox),), kwargs={}
        )
        args, kwargs, embed = message.body
        body = pickle.dumps((args, kwargs, {**embed, "probe": RunsCodeWhenUnpickled(str(marker))}))
        with Connection(current_app.conf.broker_url) as conn:
            conn.Producer().publish(
                body,
                exchange=outbox.queue,
                routing_key=outbox.queue,
                serializer=None,
                content_type=PICKLE,
                content_encoding="binary",
                headers=message.headers,
                delivery_mode=2,
                mandatory=True,
                **message.properties,
            )

        # No beat and no relay loop yet: the JSON copy stays in the outbox, nothing is drained.
        self.start_worker(env={"RELIABILITY_RELAY_LOOP": "false"})
        self.wait_for(
            lambda: marker.exists() or queue_message_counts()["dead-letters"] == 1,
            timeout=60,
            what="the worker to reject the pickle to the dead-letter queue",
        )
        self.assertFalse(marker.exists(), "the worker unpickled the message")
        self.assertEqual(queue_message_counts()["dead-letters"], 1, "dead-lettered, not dropped")
        self.assertFalse(LedgerEntry.objects.filter(kind=LedgerEntry.Kind.DEDUCTION).exists())
        self.assertEqual(Trade.objects.get().status, Trade.Status.PENDING)

        self.start_beat()  # the relay publishes the JSON copy; the drain records the dead letter
        self.wait_drained()
        self.wait_for(
            lambda: DeadLetter.objects.using(settings.BEANS_DATABASE).exists(),
            timeout=60,
            what="the drain to record the dead letter",
        )
        letter = DeadLetter.objects.using(settings.BEANS_DATABASE).get()
        self.assertEqual(letter.reason, DeadLetter.Reason.REJECTED)
        self.assertEqual(letter.message_id, trade.deduction_message_id)
        self.assertEqual(letter.handler, "beans.deduct")
        self.assertEqual((letter.headers or {})["properties"]["content_type"], PICKLE)
        self.assertFalse(marker.exists(), "the drain unpickled the message")
        self.assert_exactly_once(trades=1)  # the JSON copy deducted once; the pickle nothing


def _manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _clean_env(**overrides: str) -> dict[str, str]:
    """This process's environment without the project's variables (the test runner sets some)."""
    prefixes = ("DJANGO_", "DATABASE_", "BEANS_DATABASE_", "CELERY_", "RELIABILITY_", "METRICS_")
    env = {name: value for name, value in os.environ.items() if not name.startswith(prefixes)}
    return {**env, "DJANGO_SETTINGS_MODULE": "project.settings", **overrides}


def production_env(**overrides: str) -> dict[str, str]:
    """A complete production environment: every secret and host given, none of them a default."""
    complete = {
        "DJANGO_ENV": "production",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(64),
        "DJANGO_ALLOWED_HOSTS": "beans.example.com",
        "DATABASE_URL": "postgres://beans:db-secret@db.example.com:5432/beans",
        "CELERY_BROKER_URL": "amqp://beans-consumer:mq-secret@mq.example.com:5672/beans",
        "RELIABILITY_SIGNING_KEYS": f"k1:{secrets.token_urlsafe(48)}",
    }
    return _clean_env(**{**complete, **overrides})


class ProductionSettingsTests(SimpleTestCase):
    def test_production_settings_pass_check_deploy_with_no_warnings(self) -> None:
        result = _manage("check", "--deploy", "--fail-level", "WARNING", env=production_env())

        output = result.stdout + result.stderr
        self.assertEqual(result.returncode, 0, output)
        self.assertIn("System check identified no issues (0 silenced).", output)
        self.assertNotIn("WARNING", output)

    def test_check_deploy_fails_when_a_production_setting_is_weakened(self) -> None:
        # The control: the command above does catch a warning when there is one.
        weakened = {
            "security.W009": {"DJANGO_SECRET_KEY": "too-short"},
            "security.W008": {"DJANGO_SECURE_SSL_REDIRECT": "false"},
            "security.W004": {"DJANGO_SECURE_HSTS_SECONDS": "0"},
        }
        for warning, overrides in weakened.items():
            with self.subTest(warning):
                result = _manage(
                    "check", "--deploy", "--fail-level", "WARNING", env=production_env(**overrides)
                )
                self.assertNotEqual(result.returncode, 0)
                self.assertIn(warning, result.stderr)

    def test_production_refuses_development_defaults_debug_and_guest(self) -> None:
        refused = {
            "no secret key": ({"DJANGO_SECRET_KEY": ""}, "DJANGO_SECRET_KEY"),
            "no allowed hosts": ({"DJANGO_ALLOWED_HOSTS": ""}, "DJANGO_ALLOWED_HOSTS"),
            "any host": ({"DJANGO_ALLOWED_HOSTS": "*"}, "DJANGO_ALLOWED_HOSTS"),
            "no database URL": ({"DATABASE_URL": ""}, "DATABASE_URL"),
            "no broker URL": ({"CELERY_BROKER_URL": ""}, "CELERY_BROKER_URL"),
            "guest broker user": ({"CELERY_BROKER_URL": "amqp://guest:guest@mq.example.com//"}, "not guest"),
            "implicit guest": ({"CELERY_BROKER_URL": "amqp://mq.example.com//"}, "not guest"),
            "debug": ({"DJANGO_DEBUG": "true"}, "DJANGO_DEBUG"),
        }
        for label, (overrides, message) in refused.items():
            with self.subTest(label):
                result = _manage("check", env=production_env(**overrides))
                self.assertNotEqual(result.returncode, 0)
                self.assertIn("ImproperlyConfigured", result.stderr)
                self.assertIn(message, result.stderr.splitlines()[-1])

    def test_debug_is_off_and_hosts_are_explicit_by_default(self) -> None:
        code = "from django.conf import settings; print(settings.DEBUG, settings.ALLOWED_HOSTS)"
        development = _manage("shell", "--no-imports", "-c", code, env=_clean_env())
        production = _manage("shell", "--no-imports", "-c", code, env=production_env())

        self.assertEqual(development.stdout, "False ['localhost', '127.0.0.1', '[::1]', 'testserver']\n")
        self.assertEqual(production.stdout, "False ['beans.example.com']\n", production.stderr)


ADMIN_PROBE = """
import json
from django.test import Client
client = Client()
answers = {}
for path in ("/admin/", "/{admin}", "/{admin}login/", "/{admin}pipeline-health/"):
    response = client.get(path)
    answers[path] = [response.status_code, response.get("Location", "")]
print(json.dumps(answers))
"""


class AdminPathTests(SimpleTestCase):
    def test_the_admin_is_served_only_at_the_configured_path(self) -> None:
        admin = f"backstage-{secrets.token_hex(4)}/"
        code = ADMIN_PROBE.replace("{admin}", admin)
        result = _manage("shell", "--no-imports", "-c", code, env=_clean_env(DJANGO_ADMIN_URL=admin))

        self.assertEqual(result.returncode, 0, result.stderr)
        answers = json.loads(result.stdout)
        self.assertEqual(answers["/admin/"][0], 404, "the default path no longer serves the admin")
        self.assertEqual(answers[f"/{admin}"], [302, f"/{admin}login/?next=/{admin}"])
        self.assertEqual(answers[f"/{admin}login/"][0], 200)
        self.assertEqual(answers[f"/{admin}pipeline-health/"][0], 302, "behind the admin's login too")

    def test_a_malformed_admin_path_is_refused(self) -> None:
        for admin in ("/admin/", "admin"):
            with self.subTest(admin):
                result = _manage("check", env=_clean_env(DJANGO_ADMIN_URL=admin))
                self.assertNotEqual(result.returncode, 0)
                self.assertIn("DJANGO_ADMIN_URL", result.stderr)


@tag("integration")
class LeastPrivilegeIntegrationTests(PipelineTestCase):
    """``scripts/rabbitmq-users`` against the real broker, in a vhost and with users of its own."""

    def setUp(self) -> None:
        super().setUp()
        prefix = f"lp-{os.getpid()}-{secrets.token_hex(3)}"
        self.vhost = prefix
        self.users = {role: f"{prefix}-{role}" for role in ("producer", "consumer", "admin")}
        self.passwords = {role: secrets.token_urlsafe(24) for role in self.users}
        for user in self.users.values():
            self.addCleanup(broker_admin().user_delete, user)
        self.addCleanup(broker_admin().vhost_delete, self.vhost)
        for _ in range(2):  # idempotent: the second run finds everything in place
            result = rabbitmq_users_run(vhost=self.vhost, users=self.users, passwords=self.passwords)
            self.assertEqual(result.returncode, 0, result.stderr)
            for password in self.passwords.values():
                self.assertNotIn(password, result.stdout + result.stderr)

    def broker_url(self, role: str) -> str:
        return f"amqp://{self.users[role]}:{self.passwords[role]}@127.0.0.1:5672/{self.vhost}"

    def connect(self, role: str) -> amqp.Connection:
        connection = amqp.Connection(
            "127.0.0.1:5672",
            userid=self.users[role],
            password=self.passwords[role],
            virtual_host=self.vhost,
            confirm_publish=True,
        )
        connection.connect()
        self.addCleanup(connection.collect)
        return connection

    def assert_refused(self, role: str, operations: dict[str, Any]) -> None:
        connection = self.connect(role)
        for label, operation in operations.items():
            with self.subTest(role=role, refused=label), self.assertRaises(AccessRefused):
                operation(connection.channel())  # a refusal closes the channel: a fresh one each

    def test_each_role_gets_exactly_the_intended_permissions(self) -> None:
        listed = {
            permission.user: (permission.configure, permission.write, permission.read)
            for permission in broker_admin().permissions(self.vhost)
        }
        ours = (
            r"^(beans(\.[0-9]+)?|trades|housekeeping|dead-letters"
            r"|celery_delayed_[0-9]+|celery_delayed_delivery|celeryev(\..+)?|(.+\.)?celery\.pidbox)$"
        )
        self.assertEqual(
            listed,
            {
                self.users["producer"]: ("^$", r"^(beans(\.[0-9]+)?)$", "^$"),
                self.users["consumer"]: (ours, ours, ours),
                self.users["admin"]: (".*", ".*", ".*"),
            },
            "and guest has no access to the vhost",
        )
        tags = {user.name: user.tags for user in broker_admin().users()}
        self.assertEqual(
            [tags[self.users[role]] for role in ("producer", "consumer", "admin")],
            [(), (), ("management",)],
            "no user is a broker administrator",
        )

    @override_settings(RELIABILITY_RELAY_FAST_PATH=False)  # this process publishes nothing
    def test_producer_publishes_deductions_and_can_do_nothing_else(self) -> None:
        setup = _manage("broker_setup", env=subprocess_env({"CELERY_BROKER_URL": self.broker_url("admin")}))
        self.assertEqual(setup.returncode, 0, f"the admin declares the topology: {setup.stderr}")
        producer = self.connect("producer")
        producer.channel().basic_publish(
            amqp.Message(b'{"probe": 1}', content_type="application/json", delivery_mode=2),
            exchange="beans",
            routing_key="beans",
            mandatory=True,
        )  # returns once the broker confirmed it
        beans = "beans"
        self.assert_refused(
            "producer",
            {
                "read the queue (basic.get)": lambda ch: ch.basic_get(beans),
                "consume the queue": lambda ch: ch.basic_consume(beans, callback=lambda message: None),
                "purge the queue": lambda ch: ch.queue_purge(beans),
                "delete the queue": lambda ch: ch.queue_delete(beans),
                "delete the exchange": lambda ch: ch.exchange_delete(beans),
                "declare a queue": lambda ch: ch.queue_declare("anything", durable=True, auto_delete=False),
                "bind the queue elsewhere": lambda ch: ch.queue_bind(
                    beans, exchange="trades", routing_key="x"
                ),
                **{
                    f"publish to {exchange or 'the default exchange'}": (
                        lambda ch, exchange=exchange: ch.basic_publish(
                            amqp.Message(b"{}"), exchange=exchange, routing_key=beans
                        )
                    )
                    for exchange in ("trades", "housekeeping", "dead-letters", "")
                },
            },
        )
        admin = self.connect("admin").channel()
        self.assertEqual(admin.queue_declare(beans, passive=True).message_count, 1, "the one it published")
        self.assertEqual(admin.queue_purge(beans), 1, "the admin may purge")

        # The consumer role runs the whole pipeline: workers and beat, relay, outcomes, drain.
        self.assert_refused(
            "consumer",
            {
                "declare a queue outside the project": lambda ch: ch.queue_declare(
                    "not-ours", auto_delete=True
                ),
                "publish to an exchange outside the project": lambda ch: ch.basic_publish(
                    amqp.Message(b"{}"), exchange="amq.topic", routing_key="beans"
                ),
            },
        )
        accounts = self.create_accounts(2, balance=1000)
        for n in range(6):
            trade_place(account_id=accounts[n % 2], beans=100)
        self.process_env = {**self.process_env, "CELERY_BROKER_URL": self.broker_url("consumer")}
        self.start_worker()
        self.start_beat()
        self.wait_drained()
        self.assert_exactly_once(trades=6)
        self.assertEqual(Trade.objects.filter(status=Trade.Status.DEDUCTED).count(), 6)
        self.assertNotIn("ACCESS_REFUSED", self.logs())


def _audit_script() -> Any:
    spec = importlib.util.spec_from_file_location(
        "audit_requirements", REPO / "scripts" / "audit-requirements.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class DependencyAuditVerdictTests(SimpleTestCase):
    """``make audit`` fails on a known vulnerability, and only says so when it could check nothing."""

    def verdict(self, dependencies: list[dict[str, Any]]) -> tuple[int, str]:
        output = io.StringIO()
        with contextlib.redirect_stdout(output):
            code = _audit_script().verdict({"dependencies": dependencies, "fixes": []})
        return code, output.getvalue()

    def test_a_known_vulnerability_fails_the_audit(self) -> None:
        vuln = {
            "id": "PYSEC-0000-1",
            "aliases": ["CVE-0000-1"],
            "fix_versions": ["5.2.20"],
            "description": "",
        }
        code, output = self.verdict(
            [
                {"name": "django", "version": "5.2.19", "vulns": [vuln]},
                {"name": "kombu", "skip_reason": "Dependency not found on PyPI and could not be audited"},
            ]
        )
        self.assertEqual(code, 1)
        self.assertIn("django 5.2.19: PYSEC-0000-1 (CVE-0000-1); fixed in 5.2.20", output)

    def test_clean_packages_pass(self) -> None:
        code, output = self.verdict([{"name": "django", "version": "5.2.19", "vulns": []}])
        self.assertEqual(code, 0)
        self.assertIn("OK: 1 packages checked", output)

    def test_an_unreachable_service_is_reported_not_failed(self) -> None:
        code, output = self.verdict([{"name": "django", "skip_reason": "Dependency not found on PyPI"}])
        self.assertEqual(code, 0)
        self.assertIn("SKIPPED", output)
        self.assertIn("nothing was checked", output)
