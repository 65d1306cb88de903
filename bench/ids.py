"""Benchmark: the four message id generators, in process, across processes, and in an index.

Usage (from the repository root)::

    .venv/bin/python -m bench.ids [--seconds S] [--repeats R] [--rows N]

For each generator of ``reliability.ids`` (snowflake, uuid7, redis, database) it measures:

* **in process**: ``message_id_new()`` calls per second, one thread, for S seconds
  (every figure is the median of R runs; the load average is recorded too);
* **4 processes**: the same in 4 forked processes at once, aggregate calls per second
  (each snowflake process leases its own worker id; each process has its own Redis
  and PostgreSQL connection);
* **index cost**: N ids made in generation order and inserted (COPY, one transaction)
  into a scratch table ``id uuid primary key``; for the 64-bit generators also into
  ``id bigint primary key``; plus UUIDv4 as the random-order reference. Reported:
  size of the primary key index (``pg_relation_size``) and insert time. For the
  index test the redis and database ids are made in bulk (a pipeline, one
  ``generate_series``): the same values, in the same order, as one call at a time.

It prints a table with ratios against snowflake and writes ``bench/results/ids.json``.
Redis: database 14 of ``BENCH_REDIS_URL`` (default ``redis://127.0.0.1:6379/14``),
which belongs to this bench: its ``reliability:*`` keys are reset at the start. Since
no other process holds a worker id there, the lease epoch is recorded as old, so the
first claim does not wait out the after-data-loss quarantine. PostgreSQL: the dev
database (``DATABASE_URL``, default ``beans``, migrated), scratch tables
``bench_ids_*`` created and dropped here.
"""

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
os.environ.setdefault("LOG_LEVEL", "WARNING")

import django  # noqa: E402

django.setup()

import redis  # noqa: E402
from django.db import connections  # noqa: E402
from django.test.utils import override_settings  # noqa: E402

from reliability import ids  # noqa: E402

RESULTS = REPO / "bench" / "results" / "ids.json"
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
GENERATORS = ["snowflake", "uuid7", "redis", "database"]
PROCESSES = 4
TABLE_PREFIX = "bench_ids_"


def log(message: str) -> None:
    print(f"[bench-ids {time.strftime('%H:%M:%S')}] {message}", flush=True)


def generator_settings(name: str) -> override_settings:
    return override_settings(
        RELIABILITY_ID_GENERATOR=name,
        RELIABILITY_REDIS_URL=REDIS_URL,
        RELIABILITY_SNOWFLAKE_WORKER_ID=None,
    )


def reset_redis(*, aged: bool) -> None:
    """Delete the bench's keys; ``aged``: record the lease epoch as old (see the docstring)."""
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match="reliability:*", count=1000))
    if keys:
        client.delete(*keys)
    if aged:
        client.set(ids.LEASE_KEY_PREFIX + "epoch", 0)
    client.close()


def rate(seconds: float) -> tuple[int, float]:
    """Call message_id_new() for ``seconds``; return (calls, elapsed)."""
    new = ids.message_id_new
    count = 0
    started = time.perf_counter()
    deadline = started + seconds
    while True:
        for _ in range(200):
            new()
        count += 200
        now = time.perf_counter()
        if now >= deadline:
            return count, now - started


def in_process(name: str, seconds: float) -> float:
    with generator_settings(name):
        for _ in range(200):  # warm up: lease, connections, script load
            ids.message_id_new()
        count, elapsed = rate(seconds)
    return count / elapsed


def _child(name: str, seconds: float, start: Any, results: Any) -> None:
    with generator_settings(name):
        ids.message_id_new()  # a forked child leases its own worker id and opens its own connections
        start.wait(30)
        results.put(rate(seconds))
    ids.message_id_generators_close()
    connections.close_all()


def across_processes(name: str, seconds: float) -> float:
    connections.close_all()  # children must not share the parent's socket
    context = mp.get_context("fork")
    start, results = context.Event(), context.Queue()
    children = [
        context.Process(target=_child, args=(name, seconds, start, results)) for _ in range(PROCESSES)
    ]
    for child in children:
        child.start()
    time.sleep(0.3)
    start.set()
    outcomes = [results.get(timeout=seconds + 60) for _ in children]
    for child in children:
        child.join(30)
    return sum(count for count, _ in outcomes) / max(elapsed for _, elapsed in outcomes)


# --- index cost -----------------------------------------------------------------


def ids_in_order(name: str, rows: int) -> tuple[list[uuid.UUID], list[int] | None]:
    """Return ``rows`` ids of generator ``name`` in generation order (and their 64-bit values)."""
    if name == "uuid4":
        return [uuid.uuid4() for _ in range(rows)], None
    if name == "uuid7":
        return [ids.uuid7_new() for _ in range(rows)], None
    if name == "snowflake":
        generator = ids.SnowflakeGenerator(worker_id=1)
        values = [generator.next_id() for _ in range(rows)]
    elif name == "redis":
        client = redis.Redis.from_url(REDIS_URL)
        script = client.register_script(ids._COUNTER_LUA)
        values = []
        for offset in range(0, rows, 1000):
            with client.pipeline(transaction=False) as pipe:
                for _ in range(min(1000, rows - offset)):
                    script(keys=[ids.COUNTER_KEY], args=[ids.EPOCH_MS // 1000], client=pipe)
                values.extend(int(v) for v in pipe.execute())
        client.close()
    else:
        with connections["default"].cursor() as cursor:
            cursor.execute(
                f"SELECT nextval('{ids.DATABASE_SEQUENCE}') FROM generate_series(1, %s) ORDER BY 1",  # noqa: S608
                [rows],
            )
            values = [int(v) for (v,) in cursor.fetchall()]
    return [ids.message_id_from_int(v) for v in values], values


def index_cost(table: str, column_type: str, values: list[Any]) -> dict[str, Any]:
    with connections["default"].cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {table}")
        cursor.execute(f"CREATE TABLE {table} (id {column_type} PRIMARY KEY)")
        raw = cursor.cursor  # psycopg's own cursor, for COPY
        started = time.perf_counter()
        with raw.connection.transaction(), raw.copy(f"COPY {table} (id) FROM STDIN") as copy:
            for value in values:
                copy.write_row((value,))
        insert_s = time.perf_counter() - started
        cursor.execute(
            "SELECT pg_relation_size(%s::regclass), pg_relation_size(%s::regclass)", [f"{table}_pkey", table]
        )
        index_bytes, table_bytes = cursor.fetchone()
        cursor.execute(f"DROP TABLE {table}")
    return {
        "rows": len(values),
        "column": column_type,
        "index_bytes": index_bytes,
        "table_bytes": table_bytes,
        "insert_s": insert_s,
        "rows_per_s": len(values) / insert_s,
    }


def index_costs(rows: int) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for name in [*GENERATORS, "uuid4"]:
        message_ids, values = ids_in_order(name, rows)
        assert len(set(message_ids)) == rows, f"{name} made a duplicate"
        results[f"{name} uuid"] = {
            "generator": name,
            **index_cost(f"{TABLE_PREFIX}{name}_uuid", "uuid", message_ids),
        }
        if values is not None:
            results[f"{name} bigint"] = {
                "generator": name,
                **index_cost(f"{TABLE_PREFIX}{name}_bigint", "bigint", values),
            }
        log(f"index cost: {name} done")
    return results


def drop_scratch_tables() -> None:
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT tablename FROM pg_tables WHERE tablename LIKE %s", [TABLE_PREFIX + "%"])
        for (table,) in cursor.fetchall():
            cursor.execute(f"DROP TABLE IF EXISTS {table}")


# --- report ---------------------------------------------------------------------


def ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base else "-"


def table(header: list[str], rows: list[list[str]]) -> Iterator[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    yield "  ".join(cell.ljust(width) for cell, width in zip(header, widths, strict=True))
    yield "  ".join("-" * width for width in widths)
    for row in rows:
        yield "  ".join(
            cell.rjust(width) if i else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        )


def report(results: dict[str, Any]) -> None:
    single, multi, index = results["in_process_per_s"], results["processes_per_s"], results["index"]
    print()
    print(f"message_id_new() calls per second (1 thread; {PROCESSES} processes on {os.cpu_count()} CPUs)")
    rows = [
        [
            name,
            f"{single[name]:,.0f}",
            ratio(single[name], single["snowflake"]),
            f"{multi[name]:,.0f}",
            ratio(multi[name], multi["snowflake"]),
        ]
        for name in GENERATORS
    ]
    for line in table(
        ["generator", "in process", "vs snowflake", f"{PROCESSES} processes", "vs snowflake"], rows
    ):
        print(line)
    print()
    print(f"primary key index after {results['rows']:,} inserts in generation order")
    base = index["snowflake uuid"]
    rows = [
        [
            key,
            f"{entry['index_bytes'] / 1024 / 1024:.2f} MiB",
            ratio(entry["index_bytes"], base["index_bytes"]),
            f"{entry['insert_s']:.2f} s",
            ratio(entry["insert_s"], base["insert_s"]),
        ]
        for key, entry in index.items()
    ]
    for line in table(["table", "index size", "vs snowflake uuid", "insert", "vs snowflake uuid"], rows):
        print(line)
    print()


def machine() -> dict[str, Any]:
    with connections["default"].cursor() as cursor:
        cursor.execute("SHOW server_version")
        (pg_version,) = cursor.fetchone()
    client = redis.Redis.from_url(REDIS_URL)
    redis_version = client.info("server")["redis_version"]
    client.close()
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "postgresql": pg_version,
        "redis": redis_version,
        "load_average_at_start": os.getloadavg(),
    }


def check_sequence() -> None:
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s)", [ids.DATABASE_SEQUENCE])
        (found,) = cursor.fetchone()
    if found is None:
        sys.exit(
            f"sequence {ids.DATABASE_SEQUENCE} is missing: run `.venv/bin/python manage.py migrate` first"
        )


def timed(label: str, work: Callable[[str, float], float], name: str, seconds: float, repeats: int) -> float:
    """Return the median of ``repeats`` measurements (the machine may be shared)."""
    values = [work(name, seconds) for _ in range(repeats)]
    value = statistics.median(values)
    log(f"{label}: {value:,.0f} ids/s (median of {', '.join(f'{v:,.0f}' for v in values)})")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="length of each throughput measurement")
    parser.add_argument("--repeats", type=int, default=3, help="throughput measurements per figure (median)")
    parser.add_argument("--rows", type=int, default=200_000, help="ids inserted per index table")
    args = parser.parse_args()

    check_sequence()
    reset_redis(aged=True)
    started = time.monotonic()
    results: dict[str, Any] = {
        "machine": machine(),
        "seconds": args.seconds,
        "repeats": args.repeats,
        "rows": args.rows,
    }
    try:
        results["in_process_per_s"] = {
            name: timed(f"in process, {name}", in_process, name, args.seconds, args.repeats)
            for name in GENERATORS
        }
        ids.message_id_generators_close()
        results["processes_per_s"] = {
            name: timed(f"{PROCESSES} processes, {name}", across_processes, name, args.seconds, args.repeats)
            for name in GENERATORS
        }
        results["index"] = index_costs(args.rows)
    finally:
        drop_scratch_tables()
        ids.message_id_generators_close()
        reset_redis(aged=False)
    results["ratios_vs_snowflake"] = {
        "in_process": {
            n: v / results["in_process_per_s"]["snowflake"] for n, v in results["in_process_per_s"].items()
        },
        "processes": {
            n: v / results["processes_per_s"]["snowflake"] for n, v in results["processes_per_s"].items()
        },
        "index_bytes": {
            k: v["index_bytes"] / results["index"]["snowflake uuid"]["index_bytes"]
            for k, v in results["index"].items()
        },
        "insert_s": {
            k: v["insert_s"] / results["index"]["snowflake uuid"]["insert_s"]
            for k, v in results["index"].items()
        },
    }
    results["bench_s"] = time.monotonic() - started
    report(results)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    log(f"wrote {RESULTS.relative_to(REPO)} in {results['bench_s']:.0f} s")


if __name__ == "__main__":
    main()
