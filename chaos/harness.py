"""The chaos run's isolation, processes and probes of the database and the broker.

Like ``bench/run.py``: a database, a RabbitMQ vhost and a Redis database of the run's own,
passed to every subprocess through the environment (the developer's ``DJANGO_``,
``CELERY_``, ``RELIABILITY_``, ``TRADES_`` and database variables are cleared); every
subprocess in its own session, logging to a file under ``.run/chaos/``; every wait bounded.
Each process connects to PostgreSQL under a name of its own (``PGAPPNAME``), so the nemesis
can terminate the sessions of the workers, the relay, beat or the producers, and never the
controller's. One worker reaches RabbitMQ and PostgreSQL through ``SilentProxy`` instances
(``WorkerProxies``) that live in the controller for the whole run, so the nemesis can cut
it off silently.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from chaos.partition import SilentProxy
from project.environment import broker_url, database_recreate, database_url, libpq_url

REPO = Path(__file__).resolve().parent.parent

REDIS_HOST = "127.0.0.1"
REDIS_PORT = 6379
# A Redis database of the chaos run's own: the bench uses 12, the tests 13 and 15, bench/ids.py 14.
REDIS_DB = 11
POLL_S = 0.5

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


def _foreign(key: str) -> bool:
    """A developer's variable that could point a run at their data or change its setup."""
    return (
        key.startswith(
            ("RELIABILITY_", "DJANGO_", "CELERY_", "DATABASE_", "TRADES_", "BEANS_", "API_", "WEB_")
        )
        or "DATABASE_URL" in key
        or key == "PGAPPNAME"
    )


def isolated_env(*, database_url: str, broker_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    """The environment of a run of its own (the chaos soak, the bench) and of every process it
    starts: the developer's variables that could change the setup are dropped, the project runs
    at its defaults on the run's own database, vhost and Redis database, and ``extra`` on top."""
    env = {key: value for key, value in os.environ.items() if not _foreign(key)}
    env.update(
        DATABASE_URL=database_url,
        CELERY_BROKER_URL=broker_url,
        DJANGO_SETTINGS_MODULE="project.settings",
        DJANGO_ENV="development",
        DJANGO_DEBUG="false",
        RELIABILITY_REDIS_URL=redis_url,
        # The API's rate-limit counters too: a connection to another Redis database (the
        # default, 2) would also stop the chaos run's Redis fault from restarting redis-server.
        API_RATE_LIMIT_REDIS_URL=redis_url,
        LOG_LEVEL="WARNING",
        PYTHONPATH=str(REPO),
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


def chaos_env(names: Names, broker_url: str) -> dict[str, str]:
    """The environment of the run and of every process it starts."""
    return isolated_env(
        database_url=names.database_url,
        broker_url=broker_url,
        redis_url=f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}",
        PGAPPNAME="chaos-controller",  # pg_terminate_backend finds the others by their own names
        **PROCESS_ENV,
    )


def run_cmd(argv: list[str], *, env: dict[str, str], timeout: float, check: bool = True) -> str:
    completed = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO, check=False
    )
    if check and completed.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} exited {completed.returncode}:\n{completed.stdout}\n{completed.stderr}"
        )
    return completed.stdout


def rabbitmqctl(*args: str, env: dict[str, str], timeout: float = 120) -> str:
    ctl = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    return run_cmd([ctl, "-q", *args], env=env, timeout=timeout)


# --------------------------------------------------------------------------- leftovers of dead runs


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def orphans(names: Iterable[str], pattern: str) -> list[str]:
    """The ``names`` that match ``pattern``, whose first group is the pid of a process now gone.

    Runs name what they create after their pid (a vhost ``test-<pid>``, a database
    ``chaos_t<pid>``), so a later run can remove what a killed one left behind.
    """
    found = []
    for name in names:
        match = re.fullmatch(pattern, name)
        if match and not pid_alive(int(match.group(1))):
            found.append(name)
    return found


# --------------------------------------------------------------------------- silent partitions


def url_via(url: str, *ports: int) -> str:
    """``url`` with its hosts and ports replaced by ``127.0.0.1:port`` (user, password, vhost kept).

    Several ports make a libpq multi-host URL (``127.0.0.1:p1,127.0.0.1:p2``), one per host of a
    database cluster's URL.
    """
    parts = urlsplit(url)
    auth = parts.netloc.rpartition("@")[0]
    hosts = ",".join(f"127.0.0.1:{port}" for port in ports)
    return urlunsplit(parts._replace(netloc=f"{auth}@{hosts}" if auth else hosts))


def database_hosts(url: str) -> list[tuple[str, int]]:
    """The (host, port) pairs of a PostgreSQL URL, several for a multi-host one (libpq's parser).

    A socket directory counts as 127.0.0.1 at the same port: the proxies speak TCP.
    """
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(libpq_url(url))
    hosts = str(params.get("host") or "127.0.0.1").split(",")
    ports = str(params.get("port") or "5432").split(",")
    if len(ports) == 1:
        ports *= len(hosts)
    return [
        ("127.0.0.1" if host.startswith("/") else host, int(port))
        for host, port in zip(hosts, ports, strict=True)
    ]


def partition_drops_packets() -> bool:
    """Whether the database proxy can also drop its packets (iptables, as root), as the tests do."""
    return os.geteuid() == 0 and shutil.which("iptables") is not None


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


class Child:
    """A subprocess in its own session (its pool children share its process group), logging to a file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name, self.argv, self.env, self.log_path = name, argv, env, log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.proxied = False  # reaches the broker and the database through WorkerProxies

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def appname(self) -> str:
        return self.env.get("PGAPPNAME", "")

    def start(self) -> "Child":
        with self.log_path.open("ab") as log_file:
            log_file.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(self.argv)}\n".encode())
            log_file.flush()
            self.process = subprocess.Popen(
                self.argv,
                cwd=REPO,
                env=self.env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.started_at = time.monotonic()
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def children(self) -> list[int]:
        """The pids of the prefork pool's processes."""
        if not self.alive():
            return []
        path = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        with suppress(OSError):
            return [int(pid) for pid in path.read_text().split()]
        return []

    def signal(self, sig: int) -> None:
        if self.process is not None:
            with suppress(ProcessLookupError, PermissionError):
                os.kill(self.process.pid, sig)

    def signal_group(self, sig: int) -> None:
        if self.process is not None:
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, sig)

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for the main process to exit; True if it did."""
        if self.process is None:
            return True
        try:
            self.process.wait(timeout=max(timeout, 0))
        except subprocess.TimeoutExpired:
            return False
        return True

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM (warm shutdown), then SIGKILL the whole process group (orphaned children too)."""
        if self.process is None:
            return
        if self.alive():
            self.signal_group(signal.SIGTERM)
            if not self.wait(timeout):
                log(f"{self.name} did not stop within {timeout:.0f}s: killing it")
        self.signal_group(signal.SIGKILL)
        self.wait(10)

    def tail(self, lines: int = 20) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


class WebTier:
    """The web tier as operators run it: gunicorn with ``project/gunicorn.conf.py`` on a free port.

    ``start()`` waits until ``/healthz`` answers; ``api_key()`` creates a key with
    ``manage.py api_keys create`` (its last line is the key); ``url(path)`` names a page.
    """

    def __init__(self, *, env: dict[str, str], log_path: Path, workers: int = 2, threads: int = 1) -> None:
        self.port = free_port()
        self.env = {
            **env,
            "PORT": str(self.port),
            "WEB_CONCURRENCY": str(workers),
            "WEB_THREADS": str(threads),
            "DJANGO_DEBUG": "false",
        }
        self.child = Child(
            "web", [sys.executable, "-m", "gunicorn", "-c", "project/gunicorn.conf.py"], self.env, log_path
        )

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self, timeout: float = 60) -> "WebTier":
        self.child.start()

        def answers() -> bool:
            if not self.child.alive():
                return True  # no use waiting: said below
            with urllib.request.urlopen(self.url("/healthz"), timeout=2) as response:  # noqa: S310 - loopback
                return bool(response.status == 200)

        if not wait_for(answers, timeout=timeout, interval=0.2) or not self.child.alive():
            self.stop()
            raise RuntimeError(
                f"gunicorn did not answer /healthz within {timeout:.0f} s: {self.child.tail()}"
            )
        return self

    def api_key(self, name: str, *scopes: str, rate_limit_per_s: int = 0) -> str:
        """A new API key (``manage.py api_keys create``), for the same database the web tier serves."""
        out = run_cmd(
            [
                sys.executable,
                "manage.py",
                "api_keys",
                "create",
                name,
                "--scopes",
                *(scopes or ("trades:write", "trades:read", "accounts:read")),
                "--rate-limit",
                str(rate_limit_per_s),
            ],
            env=self.env,
            timeout=60,
        )
        return out.strip().splitlines()[-1]

    def stop(self, timeout: float = 20) -> None:
        self.child.stop(timeout)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


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


def wait_for(predicate: Callable[[], bool], *, timeout: float, interval: float = POLL_S) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds passed; return whether it became true."""
    deadline = time.monotonic() + timeout
    while True:
        with suppress(Exception):
            if predicate():
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def sleep_until(moment: float) -> None:
    delay = moment - time.monotonic()
    if delay > 0:
        time.sleep(delay)


# --------------------------------------------------------------------------- broker and database


def queue_names() -> list[str]:
    from celery import current_app

    from reliability.conf import settings

    return [queue.name for queue in current_app.conf.task_queues] + [settings.RELIABILITY_DEAD_LETTER_QUEUE]


def amqp_connection() -> Any:
    """A connection of the run's own; every publish on it waits for the broker's confirm.

    Without confirms the broker may drop a publish still in flight when the connection
    closes: the nemesis's own messages must arrive, or the checker would blame the pipeline.
    """
    from celery import current_app
    from kombu import Connection

    return Connection(
        current_app.conf.broker_url,
        connect_timeout=5,
        failover_strategy="round-robin",
        transport_options={"confirm_publish": True},
    )


def queue_counts(*, consumers: bool = False) -> dict[str, int | None]:
    """Messages (or consumers) of every project queue, from the queues themselves (passive declares)."""
    counts: dict[str, int | None] = dict.fromkeys(queue_names())
    try:
        with amqp_connection() as conn:
            conn.ensure_connection(max_retries=2, timeout=5)
            for name in counts:
                channel = conn.channel()
                try:
                    declared = channel.queue_declare(name, passive=True)
                    counts[name] = declared.consumer_count if consumers else declared.message_count
                except Exception:  # noqa: BLE001 - a missing queue closes the channel: unknown
                    counts[name] = None
                finally:
                    with suppress(Exception):
                        channel.close()
    except Exception as exc:  # noqa: BLE001 - broker unreachable: every count unknown
        log(f"cannot read queue counts: {exc}")
    return counts


def scalar(sql: str, params: list[Any] | None = None) -> Any:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(sql, params or [])
        return cursor.fetchone()[0]


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


def database_create(names: Names, env: dict[str, str]) -> None:
    log(f"creating database {names.db} and running migrations")
    database_recreate(names.database_url)
    run_cmd([sys.executable, "manage.py", "migrate", "--noinput"], env=env, timeout=600)
