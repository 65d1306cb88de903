"""Cost of a ``/metrics`` scrape against history: 1,000 message-log rows vs 1,000,000.

Usage (from the repository root)::

    .venv/bin/python -m bench.legs.metrics_scrape [--rows-small 1000] [--rows-large 1000000]
                                                  [--scrapes 40] [--json]

``measure_for_run()`` is what ``bench/run.py`` calls, after its repeats. It runs the measurement in a child process of its
own (``harness.environment.isolated_env``: the project at its defaults, the developer's ``DJANGO_``,
``CELERY_``, ``RELIABILITY_`` and database variables dropped) on a database of its own,
``beans_bench_metrics`` (dropped and created fresh; kept afterwards for inspection), so it works
whatever Django settings the caller has loaded.

Each size gets a history of its own, in a schema of that database (the pipeline's tables,
created like the migrated ones), written the way the pipeline would have left it with
``INSERT ... SELECT generate_series``: the message log (two handlers, 16 streams each, 1 row in
100 redelivered once, applied over the last 14 days, plus the same 200 rows in the last 15
minutes at every size), the published outbox rows of those messages and 50 pending ones, one
trade per two message-log rows (a deduction and its outcome; 50 pending), dead letters and
healed gaps (1 per 1,000 rows; 5 letters open, 2 gaps open, 1 escalated), the streams' counters
and watermarks, and the library's own figures of that history (the message log's counters and
the recorded queue depths, through the library's services, as the running pipeline would have
kept them), and the trades' settled counts (``TradeStatusCount``, recounted through the trade
service's repair and spread over its shards, as the consumers would have kept them). Then
``VACUUM ANALYZE``, as autovacuum would have done.

It then times GETs of ``/metrics`` through Django's test client (the whole middleware and URL
stack, as a loopback client), of the admin's pipeline health page (a staff user) and of each
collector's ``collect()`` alone, switching between the two histories (the session's
``search_path``: ``bench/histories.py``) call by call, so that other work on the machine weighs
on both alike: after 3
warm-up calls, ``scrapes`` rounds of one untimed and one timed call of each on each history; the
median is reported. Each scrape is checked to show its own history's message count. The broker is only read (passive
declares, no queue created), on your ``CELERY_BROKER_URL`` (default: the local RabbitMQ).

Result keys: ``metrics_scrape_ms_1k`` and ``metrics_scrape_ms_1m`` (median ms at ``rows_small``
and ``rows_large`` message-log rows), ``metrics_scrape_ratio_1m_vs_1k`` (goal: at most 1.5),
``metrics_library_scrape_*`` (the same without the domain collectors of ``METRICS_COLLECTORS``:
the library's own figures), the same for the health page (``health_page_ms_*``), and
``collector_ms_<size>_<name>``: one collector's ``collect()`` alone, to show what costs what.
"""

import argparse
import json
import sys
import time
from typing import Any

from bench.histories import (
    UUID7_MADE,
    histories_child_run,
    histories_prepare,
    history_tables,
    history_use,
    interleaved_medians,
)

DB_NAME = "beans_bench_metrics"
APPS = ("reliability", "trades")
STREAMS = 16
RECENT_ROWS = 200  # message-log rows in the last 15 minutes, the same at every size
PENDING_OUTBOX = 50
PENDING_TRADES = 50
WARMUP_SCRAPES = 3
HANDLERS = ("beans.deduct", "trades.record_outcome")
STREAM_PREFIXES = ("deductions.", "outcomes.")


def log(message: str) -> None:
    print(f"[metrics-scrape {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def measure(rows_small: int = 1000, rows_large: int = 1_000_000, *, scrapes: int = 40) -> dict[str, float]:
    """Time ``/metrics`` with ``rows_small`` then ``rows_large`` message-log rows; return the medians.

    Runs in a child process on a database of its own (see the module docstring).
    """
    args = ["--rows-small", str(rows_small), "--rows-large", str(rows_large), "--scrapes", str(scrapes)]
    return histories_child_run(
        "bench.legs.metrics_scrape", DB_NAME, args, timeout=3600, what="metrics scrape bench"
    )


def measure_for_run(rows_large: int, *, scrapes: int) -> dict[str, float]:
    """The leg as ``bench/run.py`` runs it: 1,000 rows against ``rows_large``; log the ratio, return the keys."""
    from bench.common import log as bench_log

    result = measure(1000, rows_large, scrapes=scrapes)
    bench_log(
        f"  /metrics {result['metrics_scrape_ms_1k']:.1f} ms at 1k rows, "
        f"{result['metrics_scrape_ms_1m']:.1f} ms at {rows_large}: "
        f"ratio {result['metrics_scrape_ratio_1m_vs_1k']:.2f}"
    )
    return result


# --------------------------------------------------------------------------- the child process


def history_write(rows: int) -> None:
    """Write a history of ``rows`` message-log rows in the current history's tables (module docstring)."""
    from django.db import connection

    history = max(rows - RECENT_ROWS, 0)
    recent = rows - history
    with connection.cursor() as cursor:
        # Row n: handler n % 2, stream (n / 2) % 16 of that handler's kind, seq n / 32 + 1: each
        # stream is gap-free. The history is spread over 14 days, ending an hour ago; the recent
        # rows fall in the last 15 minutes (the health page's throughput window).
        position = (
            "(%s::text[])[n %% 2 + 1] AS handler, (%s::text[])[n %% 2 + 1] || (n / 2) %% %s AS stream, "
            "n / (2 * %s) + 1 AS seq"
        )
        position_params: list[Any] = [list(HANDLERS), list(STREAM_PREFIXES), STREAMS, STREAMS]
        # Each message's id is a UUIDv7 of the time it was made (what the partitions are keyed
        # on), and its outbox row was made then too.
        made = (
            "CASE WHEN n < %s THEN now() - interval '1 hour' - (%s - n) * interval '14 days' / %s "
            "ELSE now() - (%s - n) * interval '14 minutes' / %s END AS made"
        )
        made_params: list[Any] = [history, history, max(history, 1), rows, max(recent, 1)]
        cursor.execute(
            "INSERT INTO reliability_messagelog (handler, message_id, stream, seq, outcome, redeliveries, "  # noqa: S608
            "applied_at) "
            f"SELECT handler, {UUID7_MADE}, stream, seq, 'applied', CASE WHEN n %% 100 = 0 THEN 1 ELSE 0 END, made "
            f"FROM generate_series(0, %s - 1) AS n, LATERAL (SELECT {position}) AS p, LATERAL (SELECT {made}) AS t",
            [rows, *position_params, *made_params],
        )
        # The published outbox rows of those messages, and some not yet published.
        cursor.execute(
            "INSERT INTO reliability_outboxmessage (message_id, task_name, queue, stream, seq, payload, status, "  # noqa: S608
            "attempts, last_error, next_attempt_at, created_at, sent_at, claimed_by) "
            f"SELECT {UUID7_MADE}, handler, 'beans', stream, seq, "
            "'{\"account_id\": 1, \"beans\": 1, \"trade_id\": 1}', 'sent', 1, '', now(), made, made, '' "
            f"FROM generate_series(0, %s - 1) AS n, LATERAL (SELECT {position}) AS p, LATERAL (SELECT {made}) AS t",
            [rows, *position_params, *made_params],
        )
        cursor.execute(
            "INSERT INTO reliability_outboxmessage (message_id, task_name, queue, stream, seq, payload, status, "  # noqa: S608
            "attempts, last_error, next_attempt_at, created_at, claimed_by) "
            f"SELECT {UUID7_MADE}, 'beans.deduct', 'beans', 'deductions.' || n %% %s, %s + n / %s, "
            "'{}', 'pending', 0, '', now(), made, '' "
            "FROM generate_series(0, %s - 1) AS n, LATERAL (SELECT now() - interval '2 seconds' AS made) AS t",
            [STREAMS, rows // (2 * STREAMS) + 2, STREAMS, PENDING_OUTBOX],
        )
        cursor.execute(
            "INSERT INTO reliability_streamcounter (stream, last_seq, task_name, queue) "
            "SELECT stream, max(seq), min(task_name), 'beans' FROM reliability_outboxmessage GROUP BY stream"
        )
        cursor.execute(
            "INSERT INTO reliability_streamwatermark (handler, stream, watermark, max_seen, producer_high, "
            "producer_high_at, gaps_found, gaps_healed, gaps_open, last_applied_at, updated_at) "
            "SELECT handler, stream, max(seq), max(seq), max(seq), now(), 0, 0, 0, max(applied_at), now() "
            "FROM reliability_messagelog GROUP BY handler, stream"
        )
        # One trade per deduction and outcome pair: 1 in 20 rejected, and some still pending.
        cursor.execute(
            "INSERT INTO trades_trade (account_id, beans, status, rejection_reason, balance_after, client_id, "
            "deduction_message_id, created_at, updated_at, settled_at) "
            "SELECT n %% 64, 1, CASE WHEN n %% 20 = 0 THEN 'rejected' ELSE 'deducted' END, "
            "CASE WHEN n %% 20 = 0 THEN 'insufficient beans' ELSE '' END, 0, 0, gen_random_uuid(), "
            "now() - interval '1 hour', now() - interval '1 hour', now() - interval '1 hour' "
            "FROM generate_series(0, %s - 1) AS n",
            [rows // 2],
        )
        cursor.execute(
            "INSERT INTO trades_trade (account_id, beans, status, rejection_reason, client_id, "
            "deduction_message_id, created_at, updated_at) "
            "SELECT n %% 64, 1, 'pending', '', 0, gen_random_uuid(), now(), now() "
            "FROM generate_series(0, %s - 1) AS n",
            [PENDING_TRADES],
        )
        # Dead letters: the history's discarded ones, and a few open.
        cursor.execute(
            "INSERT INTO reliability_deadletter (message_id, handler, stream, seq, reason, status, detail, queue, "
            "body, occurrences, replays, discard_reason, created_at, updated_at) "
            "SELECT gen_random_uuid(), 'beans.deduct', 'deductions.0', n, 'handler_failed', "
            "CASE WHEN n < 5 THEN 'open' ELSE 'discarded' END, 'bench', 'beans', '', 1, 0, "
            "CASE WHEN n < 5 THEN '' ELSE 'bench' END, now() - interval '1 hour', now() "
            "FROM generate_series(0, %s - 1) AS n",
            [5 + rows // 1000],
        )
        # Gaps: the history's healed ones, two open and one escalated.
        cursor.execute(
            "INSERT INTO reliability_streamgap (handler, stream, seq, status, detected_at, healed_at, "
            "republish_attempts, last_error) "
            "SELECT 'beans.deduct', 'deductions.1', %s + n, "
            "CASE WHEN n < 2 THEN 'open' WHEN n = 2 THEN 'escalated' ELSE 'healed' END, "
            "now() - interval '1 hour', CASE WHEN n > 2 THEN now() - interval '1 hour' END, 0, '' "
            "FROM generate_series(0, %s - 1) AS n",
            [rows + 1, 3 + rows // 1000],
        )
    library_figures_write()
    trade_figures_write()
    with connection.cursor() as cursor:
        for table in history_tables(APPS):
            cursor.execute(f"VACUUM ANALYZE {table}")


def library_figures_write() -> None:
    """The library's own figures of that history, as the running pipeline would have kept them.

    The message log's counters, which the consumers add to as they insert rows and count
    redeliveries (here: recounted from the rows written by SQL, through the library's repair,
    then spread over every shard, as many workers would have left them), and the queue depths
    beat records (read from the broker once).
    """
    from django.db import connection

    from reliability.consume.message_log import message_log_recount
    from reliability.counters import counter_shards
    from reliability.ops.queues import queue_depths_record

    message_log_recount(using="default")
    with connection.cursor() as cursor:
        cursor.execute(
            "WITH old AS (DELETE FROM reliability_pipelinecounter RETURNING name, value) "
            "INSERT INTO reliability_pipelinecounter (name, shard, value, updated_at) "
            "SELECT name, s, value / %s + CASE WHEN s = 0 THEN value %% %s ELSE 0 END, now() "
            "FROM old, generate_series(0, %s - 1) AS s",
            [counter_shards()] * 3,
        )
    queue_depths_record()


def trade_figures_write() -> None:
    """The trades' settled counts of that history, as the outcome consumers would have kept them.

    Recounted from the trades written by SQL (the trade service's repair), then spread over every
    shard, as many consumers would have left them.
    """
    from django.db import connection

    from trades.models import TRADE_STATUS_COUNT_SHARDS, TradeStatusCount
    from trades.services import trade_status_counts_recount

    trade_status_counts_recount()
    table = TradeStatusCount._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"WITH old AS (DELETE FROM {table} RETURNING status, count) "  # noqa: S608
            f"INSERT INTO {table} (status, shard, count) "
            "SELECT status, s, count / %s + CASE WHEN s = 0 THEN count %% %s ELSE 0 END "
            "FROM old, generate_series(0, %s - 1) AS s",
            [TRADE_STATUS_COUNT_SHARDS] * 3,
        )


def measurements(labels: dict[str, int], scrapes: int) -> dict[str, dict[str, float]]:
    """Median ms per history of a ``/metrics`` scrape, of the health page, and of each collector alone."""
    import re

    from django.contrib.auth.models import User
    from django.test import Client, override_settings

    from reliability.views import _metrics_collectors

    history_use(next(iter(labels)))
    staff = User.objects.filter(username="bench-metrics").first() or User.objects.create_superuser(
        "bench-metrics", password=None
    )
    client = Client(HTTP_HOST="127.0.0.1")
    page_client = Client(HTTP_HOST="127.0.0.1")
    page_client.force_login(staff)
    consumed = re.compile(rb"^beans_messages_consumed_total (\S+)$", re.MULTILINE)
    expected = {"rows": 0}

    def scrape() -> None:
        response = client.get("/metrics")
        found = consumed.search(response.content) if response.status_code == 200 else None
        if found is None or float(found.group(1)) != expected["rows"]:
            raise RuntimeError(f"/metrics answered {response.status_code}: {response.content[:300]!r}")

    def page() -> None:
        response = page_client.get("/admin/pipeline-health/")
        if response.status_code != 200:
            raise RuntimeError(f"the health page answered {response.status_code}")

    # name -> (what to time, the settings it runs with); "metrics_library": the library's own
    # figures only, without the domain collectors of settings.METRICS_COLLECTORS.
    probes: dict[str, tuple[Any, dict[str, Any]]] = {
        "metrics": (scrape, {}),
        "metrics_library": (scrape, {"METRICS_COLLECTORS": []}),
        "page": (page, {}),
    }
    for collector in _metrics_collectors():
        probes[f"collector_{type(collector).__name__}"] = (lambda c=collector: list(c.collect()), {})

    def switched(label: str) -> None:
        expected["rows"] = labels[label]

    return interleaved_medians(
        labels,
        {name: probe for name, (probe, _) in probes.items()},
        scrapes,
        warmup=WARMUP_SCRAPES,
        on_switch=switched,
        around=lambda name: override_settings(**probes[name][1]),
    )


def child(rows_small: int, rows_large: int, scrapes: int) -> dict[str, float]:
    labels = {"1k": rows_small, "1m": rows_large}
    histories_prepare(labels, APPS, history_write, log)
    from django.db import connection

    log(f"timing {scrapes} scrapes of each history, interleaved")
    by_size = measurements(labels, scrapes)
    for label, figures in by_size.items():
        log(f"{label}: {figures}")
    results: dict[str, float] = {}
    for label, figures in by_size.items():
        results[f"metrics_scrape_ms_{label}"] = figures["metrics"]
    results["metrics_scrape_ratio_1m_vs_1k"] = round(by_size["1m"]["metrics"] / by_size["1k"]["metrics"], 3)
    for label, figures in by_size.items():
        results[f"metrics_library_scrape_ms_{label}"] = figures["metrics_library"]
    results["metrics_library_scrape_ratio_1m_vs_1k"] = round(
        by_size["1m"]["metrics_library"] / by_size["1k"]["metrics_library"], 3
    )
    for label, figures in by_size.items():
        results[f"health_page_ms_{label}"] = figures["page"]
    results["health_page_ratio_1m_vs_1k"] = round(by_size["1m"]["page"] / by_size["1k"]["page"], 3)
    for label, figures in by_size.items():
        for name, value in figures.items():
            if name.startswith("collector_"):
                results[f"collector_ms_{label}_{name.removeprefix('collector_')}"] = value
    connection.close()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows-small", type=int, default=1000)
    parser.add_argument("--rows-large", type=int, default=1_000_000)
    parser.add_argument("--scrapes", type=int, default=40, help="timed scrapes per size (median)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.rows_small, args.rows_large, args.scrapes)), flush=True)
        return 0
    result = measure(args.rows_small, args.rows_large, scrapes=args.scrapes)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        width = max(map(len, result))
        for name, value in result.items():
            print(f"{name:<{width}}  {value:10.3f}")
        verdict = "met" if result["metrics_scrape_ratio_1m_vs_1k"] <= 1.5 else "NOT met"
        print(f"goal (ratio at most 1.5): {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
