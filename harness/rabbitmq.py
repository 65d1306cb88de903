"""Probes and node control of the broker the run uses: its queues, their counts, ``rabbitmqctl``.

Counts come from the queues themselves (passive declares): a listing (``broker_admin().queues()``)
reports quorum-queue counts from periodic metrics and lags by seconds. The queues are the
project's (``CELERY_TASK_QUEUES`` and the dead-letter queue) on the vhost of the Celery app's
broker URL; Celery, kombu and the settings are imported when called, never at import.
"""

import logging
import os
import shutil
import subprocess
from contextlib import suppress
from typing import Any
from urllib.parse import unquote, urlsplit

from harness.processes import REPO, run_cmd

logger = logging.getLogger(__name__)


def rabbitmqctl(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> str:
    """Node control (``stop_app``, ``start_app``, ``await_startup``): root or the rabbitmq user only.

    Administration (policies, vhosts, listings) goes through ``harness.broker_admin`` instead.
    """
    ctl = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    return run_cmd([ctl, "-q", *args], env=env if env is not None else dict(os.environ), timeout=timeout)


def queue_names() -> list[str]:
    """The project's queues: Celery's task queues and the dead-letter queue."""
    from celery import current_app

    from reliability.conf import settings

    return [queue.name for queue in current_app.conf.task_queues] + [settings.RELIABILITY_DEAD_LETTER_QUEUE]


def broker_vhost() -> str:
    """The vhost of the Celery app's broker URL."""
    from celery import current_app

    return unquote(urlsplit(current_app.conf.broker_url).path[1:]) or "/"


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
    """Messages (or consumers) of every project queue; ``None`` where the broker did not say.

    For a run that goes on whatever the broker does: an unreachable broker makes every count
    unknown (and logs a warning), a missing queue its own.
    """
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
        logger.warning("cannot read queue counts: %s", exc)
    return counts


def queue_message_counts() -> dict[str, int]:
    """Return the ready messages of every project queue, straight from the queues (a test's view:
    a missing queue or an unreachable broker raises)."""
    from celery import current_app
    from kombu import Connection

    counts = {}
    with Connection(current_app.conf.broker_url) as conn:
        for name in queue_names():
            counts[name] = conn.channel().queue_declare(name, passive=True).message_count
    return counts


def queues_purge() -> None:
    """Empty every project queue of this run's vhost (and drop the publisher's connection)."""
    from celery import current_app
    from kombu import Connection

    from reliability.produce.publisher import publisher

    publisher().close()
    with Connection(current_app.conf.broker_url) as conn:
        for name in queue_names():
            channel = conn.channel()
            try:
                channel.queue_purge(name)
            except Exception:  # noqa: BLE001, S112 - a queue not declared yet, or one a test deleted
                continue


def rabbitmq_users_run(
    *,
    vhost: str,
    users: dict[str, str],
    passwords: dict[str, str],
    argv: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``scripts/rabbitmq-users`` for ``vhost`` with these role users and passwords (``argv``
    in front of it, e.g. strace; ``env`` on top of this process's environment)."""
    return subprocess.run(
        [*argv, str(REPO / "scripts" / "rabbitmq-users")],
        env={
            **os.environ,
            **(env or {}),
            "RABBITMQ_VHOST": vhost,
            **{f"RABBITMQ_{role.upper()}_USER": user for role, user in users.items()},
            **{f"RABBITMQ_{role.upper()}_PASSWORD": password for role, password in passwords.items()},
        },
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
