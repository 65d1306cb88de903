"""What every leg of the bench shares: its isolated environment and the processes it starts.

Isolation: a fresh database ``beans_bench``, a private RabbitMQ vhost ``bench`` and Redis
database 12 (snowflake worker-id leases), passed to every subprocess through DATABASE_URL,
CELERY_BROKER_URL and RELIABILITY_REDIS_URL; the developer's other
DJANGO_/CELERY_/RELIABILITY_/TRADES_ variables are cleared, so the project runs at its defaults.
Worker and beat logs: ``.run/bench/``.
"""

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from harness.broker_admin import BrokerAdminError, broker_admin
from harness.database import database_migrated
from harness.environment import isolated_env
from harness.polling import poll_until
from harness.processes import Child
from project.environment import broker_url, broker_user, database_url

REPO = Path(__file__).resolve().parent.parent
RUN_DIR = REPO / ".run" / "bench"
RESULTS = REPO / "bench" / "results" / "latest.json"
DB_NAME = "beans_bench"
VHOST = "bench"
# On the servers of your DATABASE_URL and CELERY_BROKER_URL if you set them, else the defaults.
DATABASE_URL = database_url(DB_NAME)
BROKER_URL = broker_url(VHOST)
REDIS_URL = "redis://127.0.0.1:6379/12"
ACCOUNTS = 64
OPENING_BALANCE = 10**15
BEANS = 1
POLL_S = 0.02

# Queues the bench may declare or leave messages in; deleted before each measurement.
QUEUES = [
    "beans",
    "trades",
    "housekeeping",
    "dead-letters",
    "bench-baseline",
    "bench-raw",
    "bench-best-practice",
    "bench-outbox",
]
# Every process of the HTTP legs (and the migrations) runs with the project's settings plus the
# alternatives (bench/settings.py), so all HTTP legs share one server configuration.
BENCH_SETTINGS = {"DJANGO_SETTINGS_MODULE": "bench.settings"}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def bench_env() -> dict[str, str]:
    """The environment of the bench process and of every subprocess it starts."""
    # Snowflake worker-id leases: a Redis database of the bench's own (tests use 13 and 15,
    # bench/ids.py 14), never the developer's database 0.
    return isolated_env(database_url=DATABASE_URL, broker_url=BROKER_URL, redis_url=REDIS_URL)


# --------------------------------------------------------------------------- processes


class Children:
    """Every subprocess started, so the ``finally`` can stop them all."""

    def __init__(self) -> None:
        self.running: list[Child] = []

    def start(self, name: str, argv: list[str], *, env: dict[str, str] | None = None) -> Child:
        """Start ``argv`` with the bench's environment (and ``env`` on top), logging to ``name``.log."""
        child = Child(name, argv, env={**bench_env(), **(env or {})}, log_path=RUN_DIR / f"{name}.log")
        self.running.append(child)
        return child.start()

    def adopt(self, child: Child) -> Child:
        """Stop ``child`` too (one started by someone else, e.g. ``Gunicorn``), even on failure."""
        self.running.append(child)
        return child

    def stop(self, *stopping: Child) -> None:
        for child in stopping:
            self.running.remove(child)
            child.stop()

    def stop_all(self) -> None:
        while self.running:
            self.running.pop().stop()


def celery_argv(app: str, kind: str, *extra: str, loglevel: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", app, kind, "-l", loglevel, *extra]


def wait_until(
    done: Callable[[], bool], *, timeout: float, what: str, on_poll: Callable[[], None] = lambda: None
) -> float:
    """Poll ``done`` every ``POLL_S`` until it holds; return the wall-clock time it did."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        on_poll()
        time.sleep(POLL_S)
    return time.time()


# --------------------------------------------------------------------------- broker


def broker() -> Any:
    from bench.rawamqp import Broker

    node = urlsplit(BROKER_URL)
    return Broker(
        host=f"{node.hostname}:{node.port or 5672}",
        userid=unquote(node.username or "guest"),
        password=unquote(node.password or "guest"),
        virtual_host=VHOST,
    )


def _queue_figures(names: list[str], figure: str) -> dict[str, int]:
    """Each queue's ``figure`` (``consumer_count``, ``message_count``) from a passive declare; 0 when absent."""
    import amqp

    figures: dict[str, int] = {}
    connection = broker().connect()
    try:
        channel = connection.channel()
        for name in names:
            try:
                figures[name] = getattr(channel.queue_declare(name, passive=True), figure)
            except amqp.exceptions.NotFound:
                figures[name] = 0
                channel = connection.channel()  # a failed passive declare closes the channel
    finally:
        connection.close()
    return figures


def consumer_counts(names: list[str]) -> dict[str, int]:
    """Return the consumer count of each queue (0 when it does not exist yet)."""
    return _queue_figures(names, "consumer_count")


def queue_depths(names: list[str]) -> dict[str, int]:
    """Return the messages ready in each queue (0 when it does not exist)."""
    return _queue_figures(names, "message_count")


def queues_reset() -> dict[str, int]:
    """Delete the bench's queues in the bench vhost; return the messages that were left in each.

    Deleted, not purged: each measurement declares them afresh, with the arguments of the
    code as it is now (a queue declared by an earlier version would refuse a redeclare).
    """
    import amqp

    left: dict[str, int] = {}
    connection = broker().connect()
    try:
        channel = connection.channel()
        for name in QUEUES:
            try:
                n = channel.queue_delete(name)
            except amqp.exceptions.NotFound:
                channel = connection.channel()
                continue
            if n:
                left[name] = n
    finally:
        connection.close()
    return left


def check_alive(children: list[Child]) -> None:
    for child in children:
        if not child.alive():
            raise RuntimeError(f"{child.name} exited:\n{child.tail()}")


def wait_consumers(queues: list[str], workers: int, children: list[Child], *, timeout: float = 90) -> None:
    def ready() -> bool:
        check_alive(children)
        counts = consumer_counts(queues)
        return all(counts[q] >= workers for q in queues)

    poll_until(ready, timeout=timeout, what=f"{workers} consumer(s) on {', '.join(queues)}", interval=0.3)


# --------------------------------------------------------------------------- database


def database_create() -> None:
    log(f"creating database {DB_NAME} and running migrations")
    # bench.settings: the project's tables and the alternatives' (bench/alternatives/, django_celery_outbox).
    database_migrated(DATABASE_URL, {**bench_env(), **BENCH_SETTINGS}, timeout=300)


def database_reset() -> list[int]:
    """Empty every table of the pipeline's apps and open fresh accounts; return their ids."""
    from django.apps import apps
    from django.db import connection

    from beans.services import account_create

    tables = [
        model._meta.db_table
        for label in ("beans", "trades", "reliability", "django_celery_results")
        for model in apps.get_app_config(label).get_models()
    ]
    existing = set(connection.introspection.table_names())
    tables = [table for table in tables if table in existing]  # a model may not be migrated yet
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")
    ids = [account_create(owner=f"bench-{i}", balance=OPENING_BALANCE).pk for i in range(ACCOUNTS)]
    connection.close()  # nothing of ours may be inherited by the forked producers
    return ids


# --------------------------------------------------------------------------- vhost


def vhost_create() -> None:
    admin = broker_admin()  # the management API, or rabbitmqctl where it is not enabled
    if VHOST in admin.vhosts():
        log(f"deleting vhost {VHOST!r} left over by an earlier run")
        admin.vhost_delete(VHOST)
    admin.vhost_add(VHOST)
    admin.permissions_set(VHOST, broker_user(), ".*", ".*", ".*")


def vhost_delete() -> None:
    """Delete the bench's vhost; say so, rather than fail, when that cannot be done."""
    try:
        broker_admin().vhost_delete(VHOST)
    except BrokerAdminError as exc:
        log(f"could not delete vhost {VHOST!r}: {exc}")
