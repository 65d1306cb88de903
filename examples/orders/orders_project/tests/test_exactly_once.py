"""Every order is invoiced exactly once, with real services and real Celery processes.

RabbitMQ (a private vhost of this run, deleted at the end), PostgreSQL (Django's test database,
which the worker and beat processes are pointed at) and ``celery -A orders_project worker`` and
``beat`` subprocesses. Each scenario checks the same thing from the example's own tables: one
invoice per order, and no invoice without an order.

    python manage.py test --settings=orders_project.test_settings

Most of it goes through the library's public API. Two internals, here only: publishing the same
message again needs its signed envelope (``reliability.envelope.outbox_envelope``) built from
its outbox row (``reliability.models.OutboxMessage``); the public API has no way to send a copy.
"""

import base64
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from importlib.metadata import distribution
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from amqp.exceptions import NotFound
from django.conf import settings
from django.core.management import call_command
from django.db import connection
from django.test import SimpleTestCase, TransactionTestCase
from invoices.models import Invoice
from kombu import Connection
from orders.models import Order
from orders.services import order_place

import reliability
from orders_project.celery import app
from reliability import pipeline_health
from reliability.envelope import outbox_envelope  # internal: see the module docstring
from reliability.models import OutboxMessage  # internal: see the module docstring

EXAMPLE = Path(__file__).resolve().parents[2]
MANAGEMENT_URL = os.environ.get("RABBITMQ_MANAGEMENT_URL", "http://127.0.0.1:15672")
VHOST_PREFIX = "orders-example-"
DEAD_LETTER_QUEUE = "dead-letters"  # the default of RELIABILITY_DEAD_LETTER_QUEUE


def url_with_path(url: str, path: str) -> str:
    """``url`` naming another database or vhost; user, password, host and options kept."""
    return urlunsplit(urlsplit(url)._replace(path="/" + quote(path, safe="")))


def wait_until(predicate: Callable[[], bool], *, timeout: float, what: str, logs: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}\n{logs()}")


class BrokerAdmin:
    """Vhosts through RabbitMQ's management HTTP API, or ``rabbitmqctl`` when nothing answers there."""

    def __init__(self, broker_url: str) -> None:
        parts = urlsplit(broker_url)
        self.user = unquote(parts.username or "guest")
        login = f"{self.user}:{unquote(parts.password or 'guest')}"
        self.authorization = "Basic " + base64.b64encode(login.encode()).decode()

    def _api(self, method: str, path: str, body: dict[str, str] | None = None) -> bool:
        """Send one request; False when the API cannot be reached at all."""
        request = urllib.request.Request(  # noqa: S310 - http(s) only: MANAGEMENT_URL
            MANAGEMENT_URL + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"authorization": self.authorization, "content-type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=60):  # noqa: S310 - as above
                return True
        except urllib.error.HTTPError as exc:
            if method == "DELETE" and exc.code == 404:
                return True
            raise
        except OSError:  # refused, timed out: no management plugin here
            return False

    def vhost_add(self, vhost: str) -> None:
        name = quote(vhost, safe="")
        permissions = {"configure": ".*", "write": ".*", "read": ".*"}
        if self._api("PUT", f"/api/vhosts/{name}", {}):
            self._api("PUT", f"/api/permissions/{name}/{quote(self.user, safe='')}", permissions)
            return
        self._rabbitmqctl("add_vhost", vhost)
        self._rabbitmqctl("set_permissions", "-p", vhost, self.user, ".*", ".*", ".*")

    def vhosts_stale_delete(self, prefix: str) -> None:
        """Delete the ``<prefix><pid>`` vhosts of runs that were killed (their pid is gone)."""
        request = urllib.request.Request(  # noqa: S310 - http(s) only: MANAGEMENT_URL
            MANAGEMENT_URL + "/api/vhosts", headers={"authorization": self.authorization}
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - as above
                names = [vhost["name"] for vhost in json.load(response)]
        except OSError:  # no API here: nothing to tidy
            return
        for name in names:
            pid = name.removeprefix(prefix)
            if name.startswith(prefix) and pid.isdigit() and not Path(f"/proc/{pid}").exists():
                self.vhost_delete(name)

    def vhost_delete(self, vhost: str) -> None:
        if not self._api("DELETE", f"/api/vhosts/{quote(vhost, safe='')}"):
            self._rabbitmqctl("delete_vhost", vhost)

    @staticmethod
    def _rabbitmqctl(*args: str) -> None:
        subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=120)


class CeleryProcess:
    """``celery -A orders_project worker|beat`` in a process group of its own (pool children too)."""

    def __init__(self, kind: str, name: str, env: dict[str, str]) -> None:
        self.kind, self.name = kind, name
        self.workdir = Path(tempfile.mkdtemp(prefix=f"orders-{kind}-"))
        self.log = self.workdir / f"{name}.log"
        command = [sys.executable, "-m", "celery", "-A", "orders_project", kind, "-l", "info"]
        if kind == "worker":
            command += ["-P", "prefork", "--concurrency", "2", "-n", f"{name}@%h"]
            command += ["--without-mingle", "--without-gossip"]
        else:
            command += ["--schedule", str(self.workdir / "beat-schedule")]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command, cwd=EXAMPLE, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the main process and its pool children; wait for the main one."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=30)

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- {self.kind} {self.name} ---\n" + "\n".join(text.splitlines()[-lines:])


class InstalledLibraryTests(SimpleTestCase):
    def test_reliability_is_the_installed_distribution_not_a_checkout(self) -> None:
        location = Path(reliability.__file__).resolve()
        installed = distribution("django-exactly-once").locate_file("reliability/__init__.py")
        self.assertEqual(location, Path(str(installed)).resolve())
        self.assertTrue(location.is_relative_to(Path(sys.prefix).resolve()), location)


class ExactlyOnceTests(TransactionTestCase):
    databases = {"default"}
    broker_url = ""

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        vhost = f"{VHOST_PREFIX}{os.getpid()}"
        admin = BrokerAdmin(settings.CELERY_BROKER_URL)
        admin.vhosts_stale_delete(VHOST_PREFIX)
        cls.addClassCleanup(admin.vhost_delete, vhost)
        admin.vhost_add(vhost)
        cls.broker_url = url_with_path(settings.CELERY_BROKER_URL, vhost)
        # This process publishes too (the after-commit fast path, the relay command): same vhost.
        cls.addClassCleanup(setattr, app.conf, "broker_url", app.conf.broker_url)
        app.conf.broker_url = cls.broker_url

    def setUp(self) -> None:
        self.processes: list[CeleryProcess] = []
        self.addCleanup(self.processes_kill)
        self.fault_dir = tempfile.mkdtemp(prefix="orders-faults-")
        self.addCleanup(shutil.rmtree, self.fault_dir, ignore_errors=True)
        for name in ("invoices", "housekeeping", DEAD_LETTER_QUEUE):
            self.queue_purge(name)  # whatever an earlier test left

    # --- processes

    def process_env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The environment of a worker or beat: this run's vhost and test database."""
        return {
            **os.environ,
            "CELERY_BROKER_URL": self.broker_url,
            "DATABASE_URL": url_with_path(settings.DATABASE_URL, connection.settings_dict["NAME"]),
            "PYTHONUNBUFFERED": "1",
            **(extra or {}),
        }

    def start_worker(self, name: str, env: dict[str, str] | None = None) -> CeleryProcess:
        worker = CeleryProcess("worker", name, self.process_env(env))
        self.processes.append(worker)
        wait_until(
            lambda: " ready." in worker.log.read_text(errors="replace") or not worker.alive(),
            timeout=90,
            what=f"worker {name} to start",
            logs=self.logs,
        )
        self.assertTrue(worker.alive(), self.logs())
        return worker

    def start_beat(self) -> CeleryProcess:
        beat = CeleryProcess("beat", "beat", self.process_env())
        self.processes.append(beat)
        return beat

    def processes_kill(self) -> None:
        for process in self.processes:
            process.kill()
            shutil.rmtree(process.workdir, ignore_errors=True)

    def logs(self) -> str:
        return "\n".join(process.tail() for process in self.processes)

    # --- broker and pipeline

    def queue_purge(self, name: str) -> int:
        """Delete every message ready in queue ``name`` (which need not exist yet); return how many."""
        with Connection(self.broker_url) as broker:
            try:
                return int(broker.channel().queue_purge(name) or 0)
            except NotFound:  # not declared yet: nothing to purge
                return 0

    def totals(self) -> dict[str, Any]:
        return dict(pipeline_health()["totals"])

    def wait_for(self, predicate: Callable[[], bool], *, timeout: float, what: str) -> None:
        wait_until(predicate, timeout=timeout, what=what, logs=self.logs)

    def wait_published(self) -> None:
        """Wait until the outbox is empty; with no worker, this process's relay publishes it."""

        def published() -> bool:
            if self.totals()["outbox_pending"] == 0:
                return True
            call_command("relay_outbox", stdout=io.StringIO())  # the beat sweep's pass, once
            return False

        self.wait_for(published, timeout=30, what="the outbox to be published")

    def wait_invoiced(self, orders: int, *, timeout: float = 90) -> None:
        def done() -> bool:
            return Invoice.objects.count() >= orders and self.totals()["outbox_pending"] == 0

        self.wait_for(done, timeout=timeout, what=f"{orders} invoices")

    def assert_exactly_once(self, orders: int) -> None:
        """One invoice per order, none without one, each with its order's customer and amount."""
        placed = {order.pk: order for order in Order.objects.all()}
        self.assertEqual(len(placed), orders)
        invoices = list(Invoice.objects.all())
        per_order = Counter(invoice.order_id for invoice in invoices)
        self.assertEqual({k: n for k, n in per_order.items() if n != 1}, {}, "orders invoiced twice")
        self.assertEqual(set(per_order) - set(placed), set(), "invoices without an order")
        self.assertEqual(set(placed) - set(per_order), set(), "orders without an invoice")
        for invoice in invoices:
            order = placed[invoice.order_id]
            self.assertEqual((invoice.customer_id, invoice.amount), (order.customer_id, order.amount))
        totals = self.totals()
        self.assertEqual(totals["consumed"], orders, "one message-log row per order message")
        self.assertEqual(totals["dead_letters_open"], 0, self.logs())

    # --- the scenarios

    def test_fifty_orders_are_each_invoiced_once(self) -> None:
        self.start_worker("w1")
        self.start_beat()
        for n in range(50):
            order_place(customer_id=n % 10, amount=Decimal("10.00") + n)
        self.wait_invoiced(50)
        self.assert_exactly_once(50)

    def test_a_message_published_three_times_is_invoiced_once(self) -> None:
        order = order_place(customer_id=7, amount=Decimal("99.90"))
        self.wait_published()
        row = OutboxMessage.objects.get(task_name="invoices.issue", payload__order_id=order.pk)
        for _ in range(2):  # two more copies, straight to the queue: what a redelivery looks like
            app.send_task(
                row.task_name, args=[outbox_envelope(row)], task_id=str(row.message_id), queue=row.queue
            )
        self.start_worker("w1")
        self.wait_for(
            lambda: self.totals()["duplicates_suppressed"] == 2,
            timeout=60,
            what="both copies to be recognised as duplicates",
        )
        self.assert_exactly_once(1)

    def test_a_worker_killed_after_the_commit_before_the_ack_invoices_once(self) -> None:
        doomed = self.start_worker(
            "doomed",
            env={
                "RELIABILITY_FAULT_INJECTION": "true",
                "RELIABILITY_FAULTS": "consume.after_commit=kill:1",  # SIGKILL, once
                "RELIABILITY_FAULT_DIR": self.fault_dir,
            },
        )
        for n in range(10):
            order_place(customer_id=n, amount=Decimal("5.00") + n)
        self.wait_for(
            lambda: any(Path(self.fault_dir).iterdir()), timeout=60, what="the fault point to kill a child"
        )
        self.assertGreaterEqual(Invoice.objects.count(), 1, "its invoice committed before the kill")
        doomed.kill()  # the whole worker: what it held unacknowledged goes back to the queue
        self.start_worker("fresh")
        self.start_beat()
        self.wait_invoiced(10)
        self.wait_for(
            lambda: self.totals()["duplicates_suppressed"] >= 1,
            timeout=30,
            what="the redelivered message to be recognised",
        )
        self.assert_exactly_once(10)

    def test_messages_lost_in_the_broker_are_republished_from_the_outbox(self) -> None:
        for n in range(8):  # two orders on each of the four streams
            order_place(customer_id=n, amount=Decimal("20.00") + n)
        self.wait_published()
        self.assertGreaterEqual(self.queue_purge("invoices"), 1, "the published messages, lost")
        self.assertEqual(Invoice.objects.count(), 0)
        self.start_worker("w1")
        self.start_beat()  # heartbeats tell the consumer what was produced; the reconciler heals
        self.wait_invoiced(8)
        self.assert_exactly_once(8)
        self.assertEqual(self.totals()["gaps_healed"], 8, "the reconciler, not luck, brought them back")
