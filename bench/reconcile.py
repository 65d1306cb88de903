"""Reconciler cost against history: one pass with 1M applied messages and 10 gaps vs. 1k and 10.

Run from the repo root: ``.venv/bin/python -m bench.reconcile [--history 1000000]``. It uses a
scratch database of its own (``beans_bench_reconcile``, dropped and created fresh) and never
touches the broker (the publisher is replaced by a counter, since only the database cost of
finding the gaps is measured here). Prints the pass time at both history sizes and their ratio;
writes ``bench/results/reconcile.json``.
"""

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from unittest import mock

from project.environment import database_drop, database_recreate, database_url

REPO = Path(__file__).resolve().parent.parent
DATABASE = "beans_bench_reconcile"

os.environ["DATABASE_URL"] = database_url(DATABASE)  # on the server of yours, if you set one
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
os.environ["RELIABILITY_RECONCILE_GRACE_S"] = "0"


def fresh_database() -> None:
    database_recreate(os.environ["DATABASE_URL"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--history", type=int, default=1_000_000, help="applied messages in the big run")
    parser.add_argument("--gaps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    fresh_database()
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from reliability.ops import reconciler

    call_command("migrate", verbosity=0)

    def seed(history: int, gaps: int) -> None:
        """``history`` applied seqs on one stream (message log + outbox), with ``gaps`` of them missing."""
        with connection.cursor() as cursor:
            cursor.execute(
                "TRUNCATE reliability_messagelog, reliability_outboxmessage, reliability_streamgap, "
                "reliability_streamwatermark, reliability_streamcounter, reliability_reconcilerun"
            )
            cursor.execute(
                "INSERT INTO reliability_outboxmessage (message_id, task_name, queue, stream, seq, payload, status, "
                "attempts, last_error, next_attempt_at, created_at, sent_at, claimed_by) "
                "SELECT gen_random_uuid(), 'bench.handler', 'beans', 's', g, '{}', 'sent', 1, '', now(), now(), now(), '' "
                "FROM generate_series(1, %s) AS g",
                [history],
            )
            missing = [history - n * (history // (gaps + 1)) for n in range(1, gaps + 1)]
            cursor.execute(
                "INSERT INTO reliability_messagelog (handler, message_id, stream, seq, outcome, redeliveries, "
                "applied_at) SELECT 'bench.handler', gen_random_uuid(), 's', g, 'applied', 0, now() "
                "FROM generate_series(1, %s) AS g WHERE NOT g = ANY(%s)",
                [history, missing],
            )
            cursor.execute(
                "INSERT INTO reliability_streamgap (handler, stream, seq, status, detected_at, republish_attempts, "
                "last_error) SELECT 'bench.handler', 's', g, 'open', now() - interval '1 minute', 0, '' "
                "FROM unnest(%s::bigint[]) AS g",
                [missing],
            )
            cursor.execute(
                "INSERT INTO reliability_streamwatermark (handler, stream, watermark, max_seen, producer_high, "
                "gaps_found, gaps_healed, gaps_open, updated_at) "
                "VALUES ('bench.handler', 's', %s, %s, %s, %s, 0, %s, now())",
                [min(missing) - 1, history, history, gaps, gaps],
            )
            cursor.execute("ANALYZE")

    def pass_ms() -> float:
        samples = []
        for _ in range(args.repeats):
            with connection.cursor() as cursor:
                cursor.execute(
                    "UPDATE reliability_streamgap SET last_republished_at = NULL, republish_attempts = 0"
                )
            started = time.perf_counter()
            run = reconciler.reconcile_pass(using="default")
            samples.append((time.perf_counter() - started) * 1000)
            assert run.republished == args.gaps, run.republished
        return statistics.median(samples)

    results = {}
    with mock.patch("reliability.produce.relay.publisher"):
        for history in (1000, args.history):
            seed(history, args.gaps)
            results[history] = pass_ms()
            print(
                f"history {history:>9,} applied, {args.gaps} gaps: reconcile pass {results[history]:7.2f} ms (median)"
            )
    small, big = results[1000], results[args.history]
    print(f"ratio big/small history: {big / small:.2f} (1.0 = cost independent of history)")
    out = REPO / "bench" / "results" / "reconcile.json"
    out.write_text(
        json.dumps(
            {
                "gaps": args.gaps,
                "pass_ms": {str(k): round(v, 3) for k, v in results.items()},
                "ratio": big / small,
            },
            indent=2,
        )
    )
    connection.close()
    database_drop(os.environ["DATABASE_URL"])


if __name__ == "__main__":
    main()
