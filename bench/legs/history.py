"""History leg (issue 23, item 3): the pages and commands an operator opens every day, at 10k rows and at 10M.

Usage (from the repository root; ``make bench`` runs it after the other legs)::

    .venv/bin/python -m bench.legs.history [--rows 10000000] [--rows-small 10000] [--rounds 15]

``measure_for_run()`` is what ``bench/run.py`` calls, after its repeats. Like
``bench/legs/metrics_scrape.py`` (whose history it reuses: ``history_write``), it runs in a child process of its own on a database of its own,
``beans_bench_history`` (created fresh, dropped at the end), with the project at its defaults
(``harness.environment.isolated_env``). Each size gets a history in a schema of that database (every
table of the pipeline's apps, created like the migrated ones), written with ``INSERT ... SELECT
generate_series``, not through the pipeline: ``rows`` message-log rows and as many outbox rows
(two handlers, 16 streams), one trade per two of them with its ledger deduction, dead letters and
healed gaps (one per 1,000 rows, a few open; at least two pages of dead letters at every size, so
both lists render a full page), the counters and watermarks the pipeline keeps;
then ``VACUUM ANALYZE``, as autovacuum would have done.

Timed, the two histories interleaved call by call (the session's ``search_path`` picks one, so
other work on the machine weighs on both alike: ``bench/histories.py``), median of ``rounds`` calls after warm-up:

* the admin's change lists of the message log, the outbox, the dead letters, the trades and the
  ledger, through Django's test client as a logged-in superuser (the whole middleware stack);
* the pipeline health page (``/admin/pipeline-health/``) and ``/metrics``;
* ``manage.py pipeline_status --json``;
* one reconciler pass (``reconcile_pass``; the publisher replaced by a stand-in, so the broker is
  only read: passive declares, no queue created, as in ``bench/reconcile.py``), its open gaps made
  due again before each call so every call does the same work.

Writes ``bench/results/history.json``: per page or command the median ms at each size and
``ratio_10m_vs_10k`` (the large size over the small; goal: at most 1.5), with ``rows_large``
saying what "10m" was in that run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from io import StringIO
from pathlib import Path
from typing import Any

from bench.histories import histories_child_run, histories_prepare, history_use, interleaved_medians

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench" / "results" / "history.json"
DB_NAME = "beans_bench_history"
GOAL = 1.5
APPS = ("reliability", "trades", "beans")
ACCOUNTS = 64
WARMUP_CALLS = 2
CHANGELISTS = {
    "admin_message_log": "admin:reliability_messagelog_changelist",
    "admin_outbox": "admin:reliability_outboxmessage_changelist",
    "admin_dead_letters": "admin:reliability_deadletter_changelist",
    "admin_trades": "admin:trades_trade_changelist",
    "admin_ledger": "admin:beans_ledgerentry_changelist",
}


def log(message: str) -> None:
    print(f"[history {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def measure(rows_small: int = 10_000, rows_large: int = 10_000_000, *, rounds: int = 15) -> dict[str, Any]:
    """Time every daily page and command at ``rows_small`` and ``rows_large``; write and return the result."""
    result = histories_child_run(
        "bench.legs.history",
        DB_NAME,
        ["--rows-small", str(rows_small), "--rows", str(rows_large), "--rounds", str(rounds)],
        timeout=4 * 3600,
        what="history bench",
        drop=True,
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    return result


def measure_for_run(rows_large: int, *, rounds: int) -> dict[str, Any]:
    """The leg as ``bench/run.py`` runs it: 10,000 rows against ``rows_large``; log each page's
    ratio, return the summary's keys (each page's ratio, and the worst)."""
    from bench.common import log as bench_log

    pages = measure(10_000, rows_large, rounds=rounds)
    ratios = {name: figures["ratio_10m_vs_10k"] for name, figures in pages["pages"].items()}
    for name, figures in pages["pages"].items():
        bench_log(
            f"  {name}: {figures['ms_10k']:.1f} ms at 10k rows, {figures['ms_10m']:.1f} ms at "
            f"{rows_large:,}: ratio {figures['ratio_10m_vs_10k']:.2f}"
        )
    return {"history_ratio_10m_vs_10k": ratios, "history_worst_ratio_10m_vs_10k": max(ratios.values())}


# --------------------------------------------------------------------------- the child process


def history_write(rows: int) -> None:
    """``bench/legs/metrics_scrape.py``'s history of ``rows`` message-log rows, and the ledger beside it."""
    from django.db import connection

    from bench.legs import metrics_scrape

    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO beans_account (id, owner, balance, created_at, updated_at) "
            "SELECT n, 'history-' || n, 1000000000, now() - interval '15 days', now() "
            "FROM generate_series(0, %s - 1) AS n",
            [ACCOUNTS],
        )
    metrics_scrape.history_write(rows)
    with connection.cursor() as cursor:
        # At least two pages of dead letters at every size (metrics_scrape writes one per 1,000
        # rows): a list of 15 rows renders faster than one of 100, whatever the history.
        cursor.execute(
            "INSERT INTO reliability_deadletter (message_id, handler, stream, seq, reason, status, detail, queue, "
            "body, occurrences, replays, discard_reason, created_at, updated_at) "
            "SELECT gen_random_uuid(), 'beans.deduct', 'deductions.2', n, 'handler_failed', 'discarded', 'bench', "
            "'beans', '', 1, 0, 'bench', now() - interval '2 hours', now() FROM generate_series(1, %s) AS n",
            [max(0, 2 * 100 - (5 + rows // 1000))],
        )
        # Each settled trade's deduction, at the time it was settled.
        cursor.execute(
            "INSERT INTO beans_ledgerentry (account_id, kind, beans, balance_after, message_id, trade_id, note, "
            "created_at) SELECT account_id, 'deduction', beans, 0, deduction_message_id, id, '', settled_at "
            "FROM trades_trade WHERE status = 'deducted'"
        )
        for table in ("beans_account", "beans_ledgerentry", "reliability_deadletter"):
            cursor.execute(f"VACUUM ANALYZE {table}")


def probes() -> dict[str, Callable[[], None]]:
    """What to time, by name: each raises if the page or command did not answer as it should."""
    from unittest import mock

    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django.urls import reverse

    from reliability.ops.reconciler import reconcile_pass

    admin = User.objects.filter(username="bench-history").first() or User.objects.create_superuser(
        "bench-history", password=None
    )
    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(admin)

    def get(path: str) -> Callable[[], None]:
        def probe() -> None:
            response = client.get(path)
            if response.status_code != 200:
                raise RuntimeError(f"GET {path} answered {response.status_code}")

        return probe

    def pipeline_status() -> None:
        out = StringIO()
        call_command("pipeline_status", "--json", stdout=out)
        json.loads(out.getvalue())

    publisher = mock.patch("reliability.produce.relay.publisher")

    def reconcile() -> None:
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE reliability_streamgap SET last_republished_at = NULL, republish_attempts = 0, status = 'open' "
                "WHERE status <> 'healed'"
            )
        with publisher:
            reconcile_pass(using="default")

    found: dict[str, Callable[[], None]] = {name: get(reverse(view)) for name, view in CHANGELISTS.items()}
    found["health_page"] = get(reverse("pipeline-health"))
    found["metrics"] = get("/metrics")
    found["pipeline_status"] = pipeline_status
    found["reconcile_pass"] = reconcile
    return found


def measurements(labels: dict[str, int], rounds: int) -> dict[str, dict[str, float]]:
    """Median ms of each probe on each history, the histories interleaved call by call."""
    history_use(next(iter(labels)))
    return interleaved_medians(labels, probes(), rounds, warmup=WARMUP_CALLS)


def child(rows_small: int, rows_large: int, rounds: int) -> dict[str, Any]:
    labels = {"10k": rows_small, "10m": rows_large}
    histories_prepare(labels, APPS, history_write, log)
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT n.nspname, sum(pg_total_relation_size(c.oid)) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname LIKE 'history_%%' AND c.relkind = 'r' "
            "GROUP BY 1"
        )
        sizes = {str(schema).removeprefix("history_"): int(size) for schema, size in cursor.fetchall()}
        # Rows no time slice holds (the pipeline's ids all begin with their time: none expected).
        in_default = {}
        for label in labels:
            cursor.execute(
                f"SELECT (SELECT count(*) FROM history_{label}.reliability_messagelog_default) + "  # noqa: S608
                f"(SELECT count(*) FROM history_{label}.reliability_outboxmessage_default)"
            )
            in_default[label] = cursor.fetchone()[0]
    log(f"timing {rounds} rounds of each page and command on each history, interleaved")
    by_size = measurements(labels, rounds)
    pages = {
        name: {
            "ms_10k": by_size["10k"][name],
            "ms_10m": by_size["10m"][name],
            "ratio_10m_vs_10k": round(by_size["10m"][name] / max(by_size["10k"][name], 1e-6), 3),
        }
        for name in by_size["10k"]
    }
    for name, figures in pages.items():
        log(
            f"{name:<20} {figures['ms_10k']:9.1f} ms {figures['ms_10m']:9.1f} ms  x{figures['ratio_10m_vs_10k']:.2f}"
        )
    connection.close()
    return {
        "rows_small": rows_small,
        "rows_large": rows_large,
        "rounds": rounds,
        "bytes_small": sizes.get("10k"),
        "bytes_large": sizes.get("10m"),
        "default_partition_rows": in_default,
        "goal_ratio": GOAL,
        "pages": pages,
        "over_goal": sorted(name for name, figures in pages.items() if figures["ratio_10m_vs_10k"] > GOAL),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.legs.history",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rows", type=int, default=10_000_000, help="message-log rows of the large history")
    parser.add_argument(
        "--rows-small", type=int, default=10_000, help="message-log rows of the small history"
    )
    parser.add_argument("--rounds", type=int, default=15, help="timed calls of each probe per size (median)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.rows_small, args.rows, args.rounds)), flush=True)
        return 0
    result = measure(args.rows_small, args.rows, rounds=args.rounds)
    for name, figures in result["pages"].items():
        print(
            f"{name:<20} {figures['ms_10k']:9.1f} ms at {result['rows_small']:,} rows, "
            f"{figures['ms_10m']:9.1f} ms at {result['rows_large']:,}: x{figures['ratio_10m_vs_10k']:.2f}"
        )
    print(f"over the goal (x{GOAL}): {', '.join(result['over_goal']) or 'none'}; {RESULTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
