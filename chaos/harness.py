"""The chaos run's names, environment, worker pool, proxied worker and progress line.

The pieces the tests and the bench share (processes, the environment scrub, the web tier, the
proxies, polling, the broker's queue counts, reads of the database) are in ``harness``. Like ``bench/run.py``: a database, a RabbitMQ vhost and a Redis database of the run's own,
passed to every subprocess through the environment (the developer's ``DJANGO_``,
``CELERY_``, ``RELIABILITY_``, ``TRADES_`` and database variables are cleared); every
subprocess in its own session, logging to a file under ``.run/chaos/``; every wait bounded.
Each process connects to PostgreSQL under a name of its own (``PGAPPNAME``), so the nemesis
can terminate the sessions of the workers, the relay, beat or the producers, and never the
controller's. One worker reaches RabbitMQ and PostgreSQL through ``SilentProxy`` instances
(``WorkerProxies``) that live in the controller for the whole run, so the nemesis can cut
it off silently.
"""

import signal
import sys
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from harness.environment import isolated_env
from harness.processes import Child
from harness.proxies import SilentProxy, database_hosts, url_via
from project.environment import broker_url, database_url

REPO = Path(__file__).resolve().parent.parent

REDIS_HOST = "127.0.0.1"
REDIS_PORT = 6379
# A Redis database of the chaos run's own: the bench uses 12, the tests 13 and 15, bench/ids.py 14.
REDIS_DB = 11

# Short reconciler periods, as tests/pipeline.py uses, so healing shows within the run. Short
# snowflake leases (as the test runner uses): a process started right after Redis lost its
# data waits at most this long for its first message id.
#
# Shorter deadlines than the defaults (README, "Partitions and timeouts"), so that a partition
# of 20-30 s outlasts all of them: AMQP heartbeat 5 s (default 10: the broker drops a silent
# worker after about 10-15 s), relay leader 5 s of failed windows (default 10), relay claim
# 14 s (default 20; the least the connect and confirm timeouts allow), idle in transaction
# 10 s (default 30), and the client's TCP deadlines towards PostgreSQL 8 s (default 15).
PROCESS_ENV = {
    "RELIABILITY_RECONCILE_GRACE_S": "1",
    "RELIABILITY_RECONCILE_INTERVAL_S": "1",
    "RELIABILITY_HEARTBEAT_INTERVAL_S": "1",
    "RELIABILITY_DEAD_LETTER_DRAIN_INTERVAL_S": "1",
    "RELIABILITY_REQUEUE_PAUSE_MAX_S": "0.05",
    "RELIABILITY_SNOWFLAKE_LEASE_TTL_S": "3",
    "RELIABILITY_BROKER_HEARTBEAT_S": "5",
    "RELIABILITY_RELAY_LEADER_FAIL_S": "5",
    "RELIABILITY_RELAY_CLAIM_S": "14",
    "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_S": "10",
    "DATABASE_KEEPALIVES_IDLE_S": "2",
    "DATABASE_KEEPALIVES_INTERVAL_S": "1",
    "DATABASE_KEEPALIVES_COUNT": "3",
    "DATABASE_TCP_USER_TIMEOUT_MS": "8000",
}


def say(message: str = "") -> None:
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


def log(message: str) -> None:
    say(f"[chaos {time.strftime('%H:%M:%S')}] {message}")


# --------------------------------------------------------------------------- isolation


@dataclass(frozen=True)
class Names:
    """Where a run lives: its database, vhost and log directory (``--instance`` keeps two apart)."""

    instance: str = ""

    @property
    def db(self) -> str:
        return f"beans_chaos_{self.instance}" if self.instance else "beans_chaos"

    @property
    def vhost(self) -> str:
        return f"chaos-{self.instance}" if self.instance else "chaos"

    @property
    def run_dir(self) -> Path:
        return REPO / ".run" / "chaos" / (self.instance or "default")

    @property
    def database_url(self) -> str:
        return database_url(self.db)  # on the server of your DATABASE_URL, if you set one

    @property
    def broker_url(self) -> str:
        return broker_url(self.vhost)


def chaos_env(names: Names, broker_url: str) -> dict[str, str]:
    """The environment of the run and of every process it starts."""
    return isolated_env(
        database_url=names.database_url,
        broker_url=broker_url,
        redis_url=f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}",
        PGAPPNAME="chaos-controller",  # pg_terminate_backend finds the others by their own names
        **PROCESS_ENV,
    )


# --------------------------------------------------------------------------- silent partitions


class WorkerProxies:
    """The silent proxies one worker reaches the broker and the database through, for a whole run.

    One ``SilentProxy`` per broker node (the URL may list several, ``;``-separated, on
    the cluster) and one per PostgreSQL host (several on a Patroni cluster), all in the
    controller's process.
    ``partition("broker")`` cuts the proxied worker off from every broker node at once,
    ``partition("database")`` from PostgreSQL; ``heal_all()`` undoes whatever is cut.
    The broker side only stops moving bytes (the AMQP heartbeats must notice); the
    database side also drops its packets when it can (``partition_drops_packets``), so
    the worker's own TCP deadlines see it too, as ``tests/e2e/test_partition_integration.py``
    does.
    """

    def __init__(self, *, broker_url: str, database_url: str, drop_database_packets: bool) -> None:
        self.broker_urls = [url for url in broker_url.split(";") if url]
        self.database_url = database_url
        self.sides: dict[str, list[SilentProxy]] = {"broker": [], "database": []}
        for n, url in enumerate(self.broker_urls):
            parts = urlsplit(url)
            proxy = SilentProxy(
                parts.hostname or "127.0.0.1", parts.port or 5672, name=f"chaos-broker-proxy-{n}"
            )
            self.sides["broker"].append(proxy)
        # One per database host: on a Patroni cluster the worker follows the primary through them.
        for n, (host, port) in enumerate(database_hosts(database_url)):
            self.sides["database"].append(
                SilentProxy(host, port, name=f"chaos-db-proxy-{n}", drop_packets=drop_database_packets)
            )
        self.drop_database_packets = drop_database_packets

    def start(self) -> "WorkerProxies":
        for proxies in self.sides.values():
            for proxy in proxies:
                proxy.start()
        return self

    def env(self) -> dict[str, str]:
        """What the proxied worker's environment overrides: its broker and database URLs."""
        broker = ";".join(
            url_via(url, proxy.port)
            for url, proxy in zip(self.broker_urls, self.sides["broker"], strict=True)
        )
        return {
            "CELERY_BROKER_URL": broker,
            "DATABASE_URL": url_via(self.database_url, *(proxy.port for proxy in self.sides["database"])),
        }

    def partition(self, side: str) -> None:
        for proxy in self.sides[side]:
            proxy.partition()

    def heal(self, side: str) -> None:
        for proxy in self.sides[side]:
            proxy.heal()

    def partitioned(self) -> list[str]:
        return [side for side, proxies in self.sides.items() if any(proxy.partitioned for proxy in proxies)]

    def heal_all(self) -> list[str]:
        notes = []
        for side in self.partitioned():
            self.heal(side)
            notes.append(f"healed the partition of the proxied worker from the {side}")
        return notes

    def close(self) -> None:
        for proxies in self.sides.values():
            for proxy in proxies:
                with suppress(Exception):
                    proxy.close()


# --------------------------------------------------------------------------- processes


class Pipeline:
    """The run's workers and beat; replacements are started after a worker is killed or stopped."""

    def __init__(self, *, env: dict[str, str], run_dir: Path, workers: int, concurrency: int) -> None:
        self.env, self.run_dir = env, run_dir
        self.size, self.concurrency = workers, concurrency
        self.workers: list[Child] = []  # the base pool, kept at ``size``
        self.others: list[Child] = []  # every other process started (retired, fault workers, beat)
        self.beat: Child | None = None
        self.started = 0
        self.unexpected: list[str] = []
        # Set by the run: the base pool keeps one worker (the first, then its replacements)
        # started with these broker and database URLs, those of WorkerProxies.
        self.proxied_env: dict[str, str] | None = None

    def proxied(self) -> Child | None:
        """The live base worker that reaches the broker and the database through the proxies."""
        return next((worker for worker in self.workers if worker.proxied and worker.alive()), None)

    def start_worker(
        self,
        *,
        tag: str = "w",
        extra_env: dict[str, str] | None = None,
        base: bool = True,
        queues: list[str] | None = None,
    ) -> Child:
        self.started += 1
        via_proxies = base and self.proxied_env is not None and self.proxied() is None
        if via_proxies:
            tag = "px"  # chaos-px<n>: the worker the partition faults cut off
        name = f"chaos-{tag}{self.started}"
        argv = [
            sys.executable, "-m", "celery", "-A", "project", "worker", "-l", "warning",
            "-n", f"{name}@%h", "-c", str(self.concurrency), "--without-mingle", "--without-gossip",
            *(["-Q", ",".join(queues)] if queues else []),
        ]  # fmt: skip
        env = {
            **self.env,
            "PGAPPNAME": f"chaos-worker-{name}",
            **(self.proxied_env if via_proxies and self.proxied_env else {}),
            **(extra_env or {}),
        }
        child = Child(name, argv, env, self.run_dir / f"{name}.log")
        child.proxied = via_proxies
        (self.workers if base else self.others).append(child.start())
        return child

    def start_beat(self) -> Child:
        argv = [
            sys.executable, "-m", "celery", "-A", "project", "beat", "-l", "warning",
            "--schedule", str(self.run_dir / "beat-schedule"),
        ]  # fmt: skip
        self.beat = Child(
            "chaos-beat", argv, {**self.env, "PGAPPNAME": "chaos-beat"}, self.run_dir / "beat.log"
        )
        self.others.append(self.beat.start())
        return self.beat

    def pick(self, fraction: float) -> Child | None:
        live = [worker for worker in self.workers if worker.alive()]
        return live[min(int(fraction * len(live)), len(live) - 1)] if live else None

    def retire(self, worker: Child) -> None:
        if worker in self.workers:
            self.workers.remove(worker)
            self.others.append(worker)

    def replenish(self) -> list[str]:
        """Start replacements until the base pool is back at its size; note a worker that died by itself."""
        notes = []
        for worker in list(self.workers):
            if not worker.alive():
                note = f"{worker.name} exited by itself (code {worker.process.returncode if worker.process else '?'})"
                self.unexpected.append(f"{note}; log tail:\n{worker.tail(15)}")
                notes.append(note)
                worker.signal_group(signal.SIGKILL)
                self.retire(worker)
        while len(self.workers) < self.size:
            notes.append(f"started {self.start_worker().name}")
        return notes

    def stop_all(self) -> None:
        for child in [*self.others, *self.workers]:
            child.stop(timeout=15)

    def log_paths(self) -> list[str]:
        return sorted(str(child.log_path.relative_to(REPO)) for child in {*self.workers, *self.others})


# --------------------------------------------------------------------------- the database


def db_progress() -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT (SELECT count(*) FROM trades_trade), "
            "(SELECT count(*) FROM trades_trade WHERE status <> 'pending'), "
            "(SELECT count(*) FROM reliability_outboxmessage WHERE status = 'pending')"
        )
        placed, settled, pending = cursor.fetchone()
    return f"trades {placed} placed, {settled} settled; outbox pending {pending}"
