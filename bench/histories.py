"""Two histories side by side in one database, and the interleaved timing of calls on both.

Each size's history lives in a schema of its own (the pipeline's tables, created LIKE the
migrated ones, the partitioned ones partitioned alike), and the session's ``search_path`` picks one. So the calls on the two sizes are
interleaved, and a change in the machine's load (other work on it) weighs on both alike. Used by
the ``/metrics`` leg (``bench/legs/metrics_scrape.py``) and the history leg
(``bench/legs/history.py``), each in a child process of its own on a database of its own:
``histories_child_run`` starts it, ``histories_prepare`` (in the child) makes the database and
writes the histories.
"""

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

DAY_MS = 86_400_000
_current = {"schema": ""}

# A UUIDv7 made at the time ``made`` (its 48-bit Unix millisecond, version 7, variant 10, a
# random tail), as ``reliability.ids`` makes them: so each row lands in its time slice.
UUID7_MADE = (
    "(lpad(to_hex((extract(epoch FROM made) * 1000)::bigint), 12, '0') || '7' || "
    "substr(md5(random()::text), 1, 3) || '8' || substr(md5(random()::text), 1, 15))::uuid"
)


def histories_child_run(
    module: str, db_name: str, args: list[str], *, timeout: float, what: str, drop: bool = False
) -> dict[str, Any]:
    """Run ``python -m <module> --child <args>`` on the database ``db_name``; return its result.

    The child runs with the project at its defaults (``harness.environment.isolated_env``: the
    developer's ``DJANGO_``, ``CELERY_``, ``RELIABILITY_`` and database variables dropped), so it
    works whatever Django settings the caller has loaded; its last line of output is the result
    (JSON), its log goes to this process's standard error. ``drop``: drop the database afterwards,
    however the child ended (else it is kept for inspection).
    """
    from bench.common import REDIS_URL  # the bench's; nothing here writes to Redis
    from harness.environment import isolated_env
    from harness.processes import REPO
    from project.environment import broker_url, database_drop, database_url

    url = database_url(db_name)
    env = isolated_env(database_url=url, broker_url=broker_url(), redis_url=REDIS_URL)
    try:
        completed = subprocess.run(
            [sys.executable, "-m", module, "--child", *args],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=None,
            text=True,
            timeout=timeout,
            check=False,
        )
    finally:
        if drop:
            database_drop(url)
    if completed.returncode != 0:
        raise RuntimeError(f"{what} exited {completed.returncode}:\n{completed.stdout}")
    result: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


def history_tables(apps: Iterable[str]) -> list[str]:
    """The tables of every model of ``apps``: what a history is made of."""
    from django.apps import apps as registry

    return [model._meta.db_table for label in apps for model in registry.get_app_config(label).get_models()]


def search_path_set(sender: Any = None, connection: Any = None, **kwargs: Any) -> None:
    """On every new database session (Django reconnects after CONN_MAX_AGE): the current history.

    Connect it to ``connection_created``.
    """
    if _current["schema"] and connection is not None:
        with connection.cursor() as cursor:
            cursor.execute(f"SET search_path TO {_current['schema']}, public")


def history_use(label: str) -> None:
    """Make the history ``label`` the one the session reads and writes."""
    from django.db import connection

    _current["schema"] = f"history_{label}"
    if connection.connection is not None:
        search_path_set(connection=connection)


def history_tables_create(label: str, tables: list[str]) -> None:
    """Make the schema of the history ``label``: ``tables`` created like the migrated ones, and the
    partitioned ones (the outbox, the message log) partitioned alike: a slice per day over the
    history's 14 days and the default partition, so a history is laid out as the pipeline's is."""
    from django.db import connection
    from django.utils import timezone

    from reliability.ops.partitions import partition_default_create, partitions_ensure

    schema = f"history_{label}"
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT relname, pg_get_partkeydef(oid) FROM pg_class "
            "WHERE relkind = 'p' AND relnamespace = 'public'::regnamespace"
        )
        partitioned = dict(cursor.fetchall())
        cursor.execute(f"CREATE SCHEMA {schema}")
        for table in tables:
            by = f" PARTITION BY {partitioned[table]}" if table in partitioned else ""
            cursor.execute(f"CREATE TABLE {schema}.{table} (LIKE public.{table} INCLUDING ALL){by}")
    history_use(label)  # the partitions are made in the first schema of the search path: this one
    now_ms = int(timezone.now().timestamp() * 1000)
    for table in sorted(partitioned.keys() & set(tables)):
        partition_default_create(table=table)
        partitions_ensure(
            table=table, now_ms=now_ms, since_ms=now_ms - 15 * DAY_MS, width_s=DAY_MS / 1000, ahead=1
        )


def histories_prepare(
    labels: dict[str, int], apps: Iterable[str], write: Callable[[int], None], log: Callable[[str], None]
) -> None:
    """In the child: its database (``DATABASE_URL``) made afresh and migrated, Django set up, and
    each history's tables created (those of ``apps``) and ``write`` run for its rows
    (``labels``: label -> rows); every new session then reads the current history."""
    from project.environment import database_recreate

    database_recreate(os.environ["DATABASE_URL"])
    import django

    django.setup()
    from django.core.management import call_command
    from django.db.backends.signals import connection_created

    call_command("migrate", verbosity=0, interactive=False)
    connection_created.connect(search_path_set)
    tables = history_tables(apps)
    for label, rows in labels.items():
        history_tables_create(label, tables)
        history_use(label)
        log(f"writing a history of {rows:,} message-log rows")
        started = time.monotonic()
        write(rows)
        log(f"written in {time.monotonic() - started:.1f}s")


def interleaved_medians(
    labels: dict[str, int],
    probes: Mapping[str, Callable[[], object]],
    rounds: int,
    *,
    warmup: int,
    on_switch: Callable[[str], None] = lambda label: None,
    around: Callable[[str], AbstractContextManager[Any]] = lambda name: nullcontext(),
) -> dict[str, dict[str, float]]:
    """Median ms of each probe on each history, the histories interleaved call by call.

    Round 0 warms up (``warmup`` calls of each probe on each history); then each of ``rounds``
    rounds times one call of each probe on each history, after one untimed call, alternating
    which history goes first. ``on_switch(label)`` runs as each history is switched to;
    ``around(name)`` is a context entered around a probe's calls (e.g. its settings).
    """
    samples: dict[str, dict[str, list[float]]] = {label: {name: [] for name in probes} for label in labels}
    for round_ in range(rounds + 1):
        order = list(labels) if round_ % 2 == 0 else list(reversed(labels))
        for label in order:
            history_use(label)
            on_switch(label)
            for name, probe in probes.items():
                with around(name):
                    for _ in range(warmup if round_ == 0 else 1):
                        probe()
                    if round_ == 0:
                        continue
                    started = time.perf_counter()
                    probe()
                    samples[label][name].append((time.perf_counter() - started) * 1000)
    return {
        label: {name: round(statistics.median(values), 3) for name, values in by_probe.items()}
        for label, by_probe in samples.items()
    }
