"""Broker administration (``harness.broker_admin``) against the real local RabbitMQ.

The same round trip through both backends: the management HTTP API (what a developer who is not
root uses) and ``rabbitmqctl`` (the fallback). Then what its errors say, what they never say (a
password), and that ``scripts/rabbitmq-users`` puts no password on any command line it runs.
"""

import base64
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from unittest import mock

import amqp
from amqp.exceptions import AccessRefused
from django.test import SimpleTestCase, tag

from harness import broker_admin as broker_admin_module
from harness.broker_admin import (
    Binding,
    BrokerAdmin,
    BrokerAdminError,
    BrokerUnreachableError,
    HttpBrokerAdmin,
    Permission,
    RabbitmqctlBrokerAdmin,
    User,
    broker_admin,
)
from harness.polling import poll_until
from harness.rabbitmq import rabbitmq_users_run

CLOSED_PORT_URL = "http://127.0.0.1:1"  # nothing listens on port 1: connection refused


def unique(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{secrets.token_hex(3)}"


def amqp_connect(vhost: str, user: str, password: str) -> amqp.Connection:
    connection = amqp.Connection("127.0.0.1:5672", userid=user, password=password, virtual_host=vhost)
    connection.connect()
    return connection


def amqp_login_works(vhost: str, user: str, password: str) -> bool:
    try:
        amqp_connect(vhost, user, password).collect()
    except AccessRefused:
        return False
    return True


class BackendRoundTrip:
    """The tests each backend passes; ``admin`` is the backend under test."""

    admin: BrokerAdmin

    # The methods of SimpleTestCase the mixin uses (for mypy).
    addCleanup: Any
    assertEqual: Any
    assertIn: Any
    assertNotIn: Any
    assertFalse: Any
    assertTrue: Any

    def vhost_make(self) -> str:
        vhost = unique("broker-admin") + "/x"  # a slash: names are quoted in URLs
        self.addCleanup(self.admin.vhost_delete, vhost)
        self.admin.vhost_add(vhost)
        return vhost

    def test_a_vhost_with_permissions_a_policy_and_a_queue(self) -> None:
        vhost = self.vhost_make()
        self.admin.vhost_add(vhost)  # idempotent
        self.assertIn(vhost, self.admin.vhosts())
        self.assertEqual(self.admin.permissions(vhost), [], "a new vhost grants nobody anything")

        self.admin.permissions_set(vhost, "guest", ".*", ".*", ".*")
        self.assertEqual(self.admin.permissions(vhost), [Permission("guest", ".*", ".*", ".*")])
        connection = amqp_connect(vhost, "guest", "guest")
        self.addCleanup(connection.collect)
        connection.channel().queue_declare("probe", durable=True, auto_delete=False)
        self.assertIn(Binding("", "probe", "queue", "probe"), self.admin.bindings(vhost))

        self.admin.policy_set(vhost, "bound", "^probe$", {"max-length": 5})
        self.admin.policy_set(vhost, "bound", "^probe$", {"max-length": 5})  # idempotent
        (policy,) = self.admin.policies(vhost)
        self.assertEqual(
            (policy.name, policy.pattern, policy.apply_to, policy.definition),
            ("bound", "^probe$", "queues", {"max-length": 5}),
        )

        def policy_of_probe() -> str:
            return {queue["name"]: queue["policy"] for queue in self.admin.queues(vhost)}.get("probe", "?")

        # The management API lists queues from statistics collected every 5 s.
        poll_until(lambda: policy_of_probe() == "bound", timeout=30, what="the listing to show the policy")
        (queue,) = self.admin.queues(vhost)
        self.assertEqual((queue["name"], queue["type"]), ("probe", "classic"))
        self.admin.policy_clear(vhost, "bound")
        self.admin.policy_clear(vhost, "bound")  # absent is fine
        self.assertEqual(self.admin.policies(vhost), [])
        poll_until(lambda: policy_of_probe() == "", timeout=30, what="the listing to show no policy")

        self.admin.permissions_clear(vhost, "guest")
        self.admin.permissions_clear(vhost, "guest")  # absent is fine
        self.assertEqual(self.admin.permissions(vhost), [])
        connection.collect()
        self.admin.vhost_delete(vhost)
        self.admin.vhost_delete(vhost)  # absent is fine
        self.assertNotIn(vhost, self.admin.vhosts())

    def test_a_user_is_created_updated_and_deleted(self) -> None:
        vhost = self.vhost_make()
        user = unique("broker-admin-user")
        first, second = secrets.token_urlsafe(18), secrets.token_urlsafe(18)
        self.addCleanup(self.admin.user_delete, user)

        self.admin.user_ensure(user, first, ["management"])
        self.assertIn(User(user, ("management",)), self.admin.users())
        self.admin.permissions_set(vhost, user, "^$", "^$", "^$")
        self.assertTrue(amqp_login_works(vhost, user, first))

        self.admin.user_ensure(user, second)  # the password is reset, the tags become none
        self.assertIn(User(user, ()), self.admin.users())
        self.assertFalse(amqp_login_works(vhost, user, first))
        self.assertTrue(amqp_login_works(vhost, user, second))

        self.admin.user_delete(user)
        self.admin.user_delete(user)  # absent is fine
        self.assertNotIn(user, [known.name for known in self.admin.users()])


@tag("integration", "broker")
class HttpBrokerAdminTests(BackendRoundTrip, SimpleTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.admin = HttpBrokerAdmin.from_environment()
        try:
            self.admin.probe()
        except BrokerUnreachableError as exc:
            self.skipTest(f"the management API is not enabled ({exc}): run scripts/ensure-services as root")

    def test_the_api_is_chosen_when_it_answers(self) -> None:
        self.assertIsInstance(broker_admin(), HttpBrokerAdmin)


@tag("integration", "broker")
class RabbitmqctlBrokerAdminTests(BackendRoundTrip, SimpleTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.admin = RabbitmqctlBrokerAdmin()
        try:
            self.admin.probe()
        except BrokerAdminError as exc:
            self.skipTest(f"rabbitmqctl does not run as this user (root or rabbitmq only): {exc}")

    def test_rabbitmqctl_is_chosen_when_the_api_is_unreachable(self) -> None:
        with mock.patch.dict(os.environ, {"RABBITMQ_MANAGEMENT_URL": CLOSED_PORT_URL}):
            broker_admin.cache_clear()
            self.addCleanup(broker_admin.cache_clear)
            with self.assertLogs("harness.broker_admin", "WARNING") as logs:
                self.assertIsInstance(broker_admin(), RabbitmqctlBrokerAdmin)
        self.assertIn("127.0.0.1:1 unreachable, using rabbitmqctl", logs.output[0])


class _EchoingServer(BaseHTTPRequestHandler):
    """Answers every request with HTTP 500 and a body that repeats the request's body."""

    def do_PUT(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"] or 0))
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"error": "boom", "you sent": ' + json.dumps(body.decode()).encode() + b"}")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@tag("integration", "broker")
class BrokerAdminErrorTests(SimpleTestCase):
    """Errors name the request, the API and the status; no password in them, ever."""

    def assert_no_secret(self, error: BaseException, secret: str) -> None:
        text = "".join(traceback.format_exception(error))
        encoded = base64.b64encode(f"guest:{secret}".encode()).decode()
        for forbidden in (secret, encoded):
            self.assertNotIn(forbidden, text)

    def test_refused_credentials_say_what_failed_and_not_the_password(self) -> None:
        secret = secrets.token_urlsafe(18)
        admin = HttpBrokerAdmin.from_environment()
        try:
            admin.probe()
        except BrokerUnreachableError:
            self.skipTest("the management API is not enabled: run scripts/ensure-services as root")
        wrong = HttpBrokerAdmin(admin.url, "guest", secret)
        with self.assertRaises(BrokerAdminError) as caught:
            wrong.vhosts()
        message = str(caught.exception)
        for part in ("GET /api/vhosts", admin.url, "'guest'", "HTTP 401", "RABBITMQ_MANAGEMENT_URL"):
            self.assertIn(part, message)
        self.assert_no_secret(caught.exception, secret)

    def test_an_unreachable_api_is_named_without_the_password_of_its_url(self) -> None:
        secret = secrets.token_urlsafe(18)
        url = f"http://guest:{secret}@127.0.0.1:1"
        with mock.patch.dict(os.environ, {"RABBITMQ_MANAGEMENT_URL": url}):
            admin = HttpBrokerAdmin.from_environment()
        self.assertEqual((admin.url, admin.user), (CLOSED_PORT_URL, "guest"))
        with self.assertRaises(BrokerUnreachableError) as caught:
            admin.vhost_add("anything")
        self.assertIn(
            "PUT /api/vhosts/anything on the management API at http://127.0.0.1:1", str(caught.exception)
        )
        self.assertIn("unreachable", str(caught.exception))
        self.assert_no_secret(caught.exception, secret)

    def test_an_error_that_repeats_the_request_never_shows_a_password(self) -> None:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoingServer)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)
        secret, new_password = secrets.token_urlsafe(18), secrets.token_urlsafe(18)
        admin = HttpBrokerAdmin(f"http://127.0.0.1:{server.server_port}", "guest", secret)
        with self.assertRaises(BrokerAdminError) as caught:
            admin.user_ensure("someone", new_password, ["management"])
        self.assertIn("PUT /api/users/someone", str(caught.exception))
        self.assertIn("HTTP 500", str(caught.exception))
        self.assertIn("***", str(caught.exception), "the echoed password, masked")
        self.assert_no_secret(caught.exception, new_password)
        self.assert_no_secret(caught.exception, secret)

    def test_neither_way_working_names_both_and_what_to_do(self) -> None:
        with (
            mock.patch.dict(os.environ, {"RABBITMQ_MANAGEMENT_URL": CLOSED_PORT_URL}),
            mock.patch.object(broker_admin_module.shutil, "which", return_value="/nonexistent/rabbitmqctl"),
        ):
            broker_admin.cache_clear()
            self.addCleanup(broker_admin.cache_clear)
            with self.assertRaises(BrokerAdminError) as caught:
                broker_admin()
        message = str(caught.exception)
        self.assertIn("management API at http://127.0.0.1:1 unreachable", message)
        self.assertIn("rabbitmqctl not runnable as this user", message)
        self.assertIn(
            "run scripts/ensure-services as root once to enable the rabbitmq_management plugin", message
        )

    def test_rabbitmqctl_gets_passwords_on_standard_input_only(self) -> None:
        password = secrets.token_urlsafe(18)
        calls: list[tuple[list[str], str]] = []

        def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
            calls.append((argv, kwargs.get("input", "")))
            return subprocess.CompletedProcess(argv, 0, stdout="[]", stderr="")

        with mock.patch.object(broker_admin_module.subprocess, "run", side_effect=run):
            RabbitmqctlBrokerAdmin().user_ensure("someone", password, ["management"])
        self.assertEqual(
            [argv[2:] for argv, _ in calls][1:],
            [["add_user", "--", "someone"], ["set_user_tags", "--", "someone", "management"]],
        )
        self.assertFalse([argv for argv, _ in calls if any(password in arg for arg in argv)])
        self.assertEqual([stdin for _, stdin in calls if password in stdin], [password + "\n"])


@tag("integration", "broker")
class RabbitmqUsersScriptTests(SimpleTestCase):
    """``scripts/rabbitmq-users`` puts no password on a command line, through either backend."""

    def setUp(self) -> None:
        super().setUp()
        self.vhost = unique("rabbitmq-users")
        self.users = {role: f"{self.vhost}-{role}" for role in ("producer", "consumer", "admin")}
        self.passwords = {role: secrets.token_urlsafe(24) for role in self.users}
        for user in self.users.values():
            self.addCleanup(broker_admin().user_delete, user)
        self.addCleanup(broker_admin().vhost_delete, self.vhost)

    def run_script(self, argv: list[str], env: dict[str, str]) -> None:
        result = rabbitmq_users_run(
            vhost=self.vhost, users=self.users, passwords=self.passwords, argv=tuple(argv), env=env
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertTrue(amqp_login_works(self.vhost, self.users["admin"], self.passwords["admin"]))

    def assert_no_password_in(self, text: str) -> None:
        for role, password in self.passwords.items():
            self.assertNotIn(password, text, f"the {role}'s password is on a command line")

    def test_through_the_api_no_command_line_holds_a_password(self) -> None:
        if shutil.which("strace") is None:
            self.skipTest("needs strace (apt-get install strace)")
        probe = subprocess.run(["strace", "-qq", "-o", os.devnull, "true"], capture_output=True, check=False)
        if probe.returncode != 0:
            self.skipTest(f"strace cannot trace here: {probe.stderr.decode().strip()}")
        with tempfile.TemporaryDirectory(prefix="rabbitmq-users-") as workdir:
            trace = Path(workdir) / "execve"
            # Every execve of the script and of everything it starts, with whole arguments.
            self.run_script(
                ["strace", "-f", "-qq", "-s", "65536", "-e", "trace=execve", "-o", str(trace)], {}
            )
            commands = trace.read_text()
        self.assertIn("harness/broker_admin.py", commands, "it ran the tool")
        self.assertNotIn("rabbitmqctl", commands, "the API answered: no fallback")
        self.assert_no_password_in(commands)

    def test_through_rabbitmqctl_no_command_line_holds_a_password(self) -> None:
        try:
            RabbitmqctlBrokerAdmin().probe()
        except BrokerAdminError as exc:
            self.skipTest(f"rabbitmqctl does not run as this user: {exc}")
        real = RabbitmqctlBrokerAdmin().command
        with tempfile.TemporaryDirectory(prefix="rabbitmq-users-") as workdir:
            # A rabbitmqctl first on PATH that writes down its arguments (strace -f through the
            # Erlang VM takes a minute).
            log = Path(workdir) / "argv"
            shim = Path(workdir) / "rabbitmqctl"
            shim.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$*\" >>'{log}'\nexec '{real}' \"$@\"\n")
            shim.chmod(0o755)
            path = f"{workdir}:{os.environ.get('PATH', '')}"
            self.run_script([], {"RABBITMQ_MANAGEMENT_URL": CLOSED_PORT_URL, "PATH": path})
            commands = log.read_text()
        self.assertRegex(commands, r"(?m)^-q (add_user|change_password) -- .*-producer$")
        self.assertIn(f"-q set_permissions -p {self.vhost} -- {self.users['admin']} .* .* .*", commands)
        self.assert_no_password_in(commands)
