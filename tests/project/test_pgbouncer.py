"""The web tier through pgbouncer in transaction pooling mode (``scripts/pgbouncer``, ``DATABASE_POOLER``).

A private pgbouncer (its own directory and a free port) in front of the test database's server,
and a real gunicorn whose ``DATABASE_URL`` leads to it with ``DATABASE_POOLER=pgbouncer-transaction``:
trades placed concurrently (some repeating an Idempotency-Key) and read back are exactly what
the database holds, and pgbouncer's own counters and the server's sessions show that the web
tier's queries went through it, over fewer server connections than it had clients. A second test
shows why the relay loop (a session advisory lock, LISTEN) must not: a session lock taken through
the pooler stays behind on a shared server connection after its client has gone.
"""

import json
import os
import random
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
from django.db import connection, connections
from django.test import TransactionTestCase, tag

from beans.contracts import DEDUCT_TASK
from beans.services import account_create
from harness.environment import subprocess_env
from harness.ports import free_port
from harness.processes import REPO
from harness.web import Gunicorn
from reliability.models import OutboxMessage
from tests.api import api_key_new
from trades.models import Trade

SCRIPT = REPO / "scripts" / "pgbouncer"
POOLER = "pgbouncer-transaction"


def pgbouncer_missing() -> str:
    """What to install for these tests, or "" (as root, ``scripts/pgbouncer up`` installs it)."""
    found = shutil.which("pgbouncer", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    if found or os.geteuid() == 0:
        return ""
    return "pgbouncer is not installed: apt-get install --no-install-recommends pgbouncer"


class PgBouncer:
    """``scripts/pgbouncer`` in a directory of its own, on a free port, for one test."""

    def __init__(self, *, upstream: str, user: str, pool_size: int) -> None:
        # Owned by pgbouncer's user once it is up; `down` removes it.
        self.dir = Path(tempfile.mkdtemp(prefix="beans-pgbouncer-"))
        self.port = free_port()
        self.user = user
        self.env = {
            **os.environ,
            "PGBOUNCER_DIR": str(self.dir),
            "PGBOUNCER_PORT": str(self.port),
            "PGBOUNCER_UPSTREAM": upstream,
            "PGBOUNCER_USERS": user,
            "PGBOUNCER_POOL_SIZE": str(pool_size),
        }

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(SCRIPT), *args], env=self.env, capture_output=True, text=True, timeout=300, check=False
        )

    def up(self) -> None:
        done = self.run("up")
        if done.returncode != 0:
            raise AssertionError(f"scripts/pgbouncer up exited {done.returncode}:\n{done.stderr[-3000:]}")

    def down(self) -> None:
        done = self.run("down")
        shutil.rmtree(self.dir, ignore_errors=True)
        if done.returncode != 0:
            raise AssertionError(f"scripts/pgbouncer down exited {done.returncode}:\n{done.stderr[-3000:]}")

    def url(self, name: str) -> str:
        done = self.run("url", name)
        if done.returncode != 0:
            raise AssertionError(done.stderr)
        return done.stdout.strip()

    def connect(self, name: str, **kwargs: Any) -> psycopg.Connection[Any]:
        return psycopg.connect(self.url(name), user=self.user, autocommit=True, **kwargs)

    def show(self, what: str) -> list[dict[str, Any]]:
        """``SHOW what`` on the admin console, as one dict per row."""
        with self.connect("pgbouncer") as admin:
            cursor = admin.execute(f"SHOW {what}")
            names = [column.name for column in cursor.description or ()]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def server_of(alias: str = "default") -> tuple[str, str]:
    """The test database's server (``host:port``, host maybe a socket directory) and user."""
    connection_ = connections[alias]
    connection_.ensure_connection()
    info = connection_.connection.info
    return f"{info.host}:{info.port}", info.user


def request(
    url: str, *, key: str, body: dict[str, int] | None = None, idempotency_key: str = ""
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {key}"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    sent = urllib.request.Request(url, data=data, headers=headers, method="POST" if body else "GET")  # noqa: S310
    try:
        with urllib.request.urlopen(sent, timeout=60) as response:  # noqa: S310 - a local test server
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


@tag("integration", "pgbouncer")
class WebTierThroughPgBouncerTests(TransactionTestCase):
    POOL_SIZE = 3
    THREADS = 16

    def setUp(self) -> None:
        missing = pgbouncer_missing()
        if missing:
            self.skipTest(missing)
        upstream, self.user = server_of()
        if connection.connection.info.password:
            self.skipTest(
                "the test database's server wants a password: pgbouncer here logs in with none (trust)"
            )
        self.bouncer = PgBouncer(upstream=upstream, user=self.user, pool_size=self.POOL_SIZE)
        self.addCleanup(self.bouncer.down)  # whatever happens next, it stops and its directory goes
        self.bouncer.up()

    def database_name(self, alias: str = "default") -> str:
        return str(connections[alias].settings_dict["NAME"])

    def test_trades_placed_concurrently_through_the_pooler_are_exactly_what_the_database_holds(self) -> None:
        accounts = [account_create(owner=f"pooled-{n}", balance=10**9).pk for n in range(4)]
        key = api_key_new("pgbouncer")
        database = self.database_name()
        pooled = {"DATABASE_URL": self.bouncer.url(database), "DATABASE_POOLER": POOLER}
        if "beans" in connections:
            pooled["BEANS_DATABASE_URL"] = self.bouncer.url(self.database_name("beans"))
        # Two workers of eight threads: up to 16 Django connections (clients of pgbouncer) for
        # POOL_SIZE server connections.
        server = Gunicorn(subprocess_env({**pooled, "WEB_THREADS": "8", "GUNICORN_CMD_ARGS": "--workers 2"}))
        self.addCleanup(server.stop)
        server.wait_answering()

        # 120 orders with an Idempotency-Key, 40 without, and 40 repeats of keyed ones: 200 requests.
        orders: list[tuple[dict[str, int], str]] = [
            ({"account": accounts[n % 4], "beans": 1 + n % 5}, f"pooled-{n}") for n in range(120)
        ]
        orders += [({"account": accounts[n % 4], "beans": 2}, "") for n in range(40)]
        orders += orders[:40]
        random.Random(15).shuffle(orders)
        place = server.url("/api/trades/")
        with ThreadPoolExecutor(self.THREADS) as pool:
            answers = list(
                pool.map(
                    lambda order: request(place, key=key, body=order[0], idempotency_key=order[1]), orders
                )
            )

        statuses = Counter(status for status, _ in answers)
        self.assertEqual(
            statuses, {201: 160, 200: 40}, [body for status, body in answers if status >= 300][:3]
        )
        by_key: dict[str, set[int]] = {}
        for (order, idempotency_key), (_, body) in zip(orders, answers, strict=True):
            self.assertEqual((body["account"], body["beans"]), (order["account"], order["beans"]))
            if idempotency_key:
                by_key.setdefault(idempotency_key, set()).add(body["id"])
        self.assertEqual(len(by_key), 120)
        self.assertEqual(
            {key_: len(ids) for key_, ids in by_key.items() if len(ids) != 1}, {}, "one trade per key"
        )
        placed = {body["id"]: body for _, body in answers}
        self.assertEqual(len(placed), 160)

        with ThreadPoolExecutor(self.THREADS) as pool:
            read = list(
                pool.map(lambda trade_id: request(server.url(f"/api/trades/{trade_id}/"), key=key), placed)
            )
        self.assertEqual(Counter(status for status, _ in read), {200: 160})
        for _, body in read:
            first = placed[body["id"]]
            self.assertEqual(
                (body["account"], body["beans"], body["message_id"]),
                (first["account"], first["beans"], first["message_id"]),
            )

        # What the database holds (read directly, not through the pooler).
        self.assertEqual(set(Trade.objects.values_list("pk", flat=True)), set(placed))
        outbox = OutboxMessage.objects.using(Trade.objects.db).filter(task_name=DEDUCT_TASK)
        self.assertEqual(outbox.count(), 160)
        self.assertEqual({row.payload["trade_id"] for row in outbox}, set(placed))
        self.assertEqual(
            {str(row.message_id) for row in outbox}, {str(body["message_id"]) for body in placed.values()}
        )

        # The web tier's queries went through pgbouncer...
        stats = {row["database"]: row for row in self.bouncer.show("STATS")}
        self.assertIn(database, stats, "pgbouncer saw no traffic to the test database")
        self.assertGreaterEqual(stats[database]["total_xact_count"], len(orders) + len(placed))
        # ... over at most POOL_SIZE server connections, for more clients than that ...
        clients = [row for row in self.bouncer.show("CLIENTS") if row["database"] == database]
        servers = [row for row in self.bouncer.show("SERVERS") if row["database"] == database]
        self.assertGreater(len(clients), self.POOL_SIZE, "gunicorn's threads each hold a client connection")
        self.assertLessEqual(len(servers), self.POOL_SIZE)
        self.assertGreater(len(servers), 0)
        # ... and no session of the test database but this process's own is anyone else's: a
        # web tier that connected directly would show up here.
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
            )
            sessions = {pid for (pid,) in cursor.fetchall()}
        self.assertLessEqual(
            sessions, {row["remote_pid"] for row in servers}, "sessions not made by pgbouncer"
        )

        # The deadlines the settings leave out come from the pooler: each server connection has
        # the server's idle-in-transaction deadline.
        with self.bouncer.connect(database) as through:
            timeout = through.execute("SHOW idle_in_transaction_session_timeout").fetchone()
        self.assertNotIn(timeout, (None, ("0",)))

    def test_session_state_does_not_survive_a_transaction_through_the_pooler(self) -> None:
        """Why the relay loop's listener must connect directly (reliability/produce/relay.py)."""
        database = self.database_name()
        lock = random.SystemRandom().randrange(1, 2**31)
        with self.bouncer.connect(database) as client:
            self.assertEqual(client.execute("SELECT pg_try_advisory_lock(%s)", [lock]).fetchone(), (True,))
        # The client is gone; its "session" lock is not: the server connection that took it went
        # back to the pool, still holding it, so no other relay could ever take the lead.
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objid = %s "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                [lock],
            )
            self.assertEqual(cursor.fetchone()[0], 1)
        # And libpq's session options, which a direct connection carries for its deadlines, are refused.
        with self.assertRaisesRegex(psycopg.OperationalError, "unsupported startup parameter: options"):
            self.bouncer.connect(database, options="-c idle_in_transaction_session_timeout=1000").close()
