"""The soak (``bench/soak.py``): its steady-state judgement, and a short run through several retention cycles.

``SteadyStateTests`` feed ``steady_state`` crafted series (no services): a flat run passes, and
table bytes, a process's RSS or p99 that keep growing, or a throughput that falls, each fail
with a message that names the figure. ``SoakShortTierTests`` (tags ``soak``, ``integration``)
runs ``python -m bench.soak`` for 1.5 minutes with one-minute retention windows, so retention
deletes rows several times, and expects 0 lost, 0 duplicated effects, every invariant held and
a complete JSON; not the 10% plateau, which a run that short cannot show.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from django.conf import settings
from django.test import SimpleTestCase, tag

from bench.soak import bytes_per_trade, retention_env, steady_state
from harness.broker_admin import BrokerAdminError, broker_admin
from project.environment import database_drop, database_url

REPO = Path(settings.BASE_DIR)
MIB = 2**20


def minute(
    n: int, *, table_mib: float = 40, rss_mib: float = 200, p99_ms: float = 50, per_s: float = 100
) -> dict[str, Any]:
    return {
        "minute": float(n),
        "trades_per_s": per_s,
        "p99_ms": p99_ms,
        "retained_table_bytes": table_mib * MIB,
        "processes": {"worker1": {"rss": rss_mib * MIB}, "web": {"rss": 150 * MIB}},
    }


class SteadyStateTests(SimpleTestCase):
    def test_a_flat_run_with_a_retention_sawtooth_is_steady(self) -> None:
        # Retention deletes every few minutes: the table bytes climb and fall back, the same peaks.
        run = [minute(n, table_mib=40 + (n % 5) * 2, p99_ms=50 + n % 3) for n in range(30)]
        verdict = steady_state(run, judged_from_minute=12)
        self.assertTrue(verdict["ok"], verdict["failures"])
        self.assertEqual(verdict["failures"], [])
        self.assertEqual(verdict["judged_minutes"], 18)
        self.assertLessEqual(verdict["table_bytes_growth"], 0.10)

    def test_growing_table_bytes_fail_and_say_so(self) -> None:
        run = [minute(n, table_mib=40 + 3 * n) for n in range(30)]
        verdict = steady_state(run, judged_from_minute=12)
        self.assertFalse(verdict["ok"])
        self.assertGreater(verdict["table_bytes_growth"], 0.10)
        self.assertEqual(len(verdict["failures"]), 1, verdict["failures"])
        self.assertIn("table bytes grew", verdict["failures"][0])

    def test_a_process_whose_rss_grows_is_named(self) -> None:
        run = [minute(n, rss_mib=200 + 10 * n) for n in range(30)]
        verdict = steady_state(run, judged_from_minute=12)
        self.assertFalse(verdict["ok"])
        self.assertGreater(verdict["rss_growth_by_process"]["worker1"], 0.10)
        self.assertEqual(verdict["rss_growth_by_process"]["web"], 0.0)
        self.assertEqual(len(verdict["failures"]), 1, verdict["failures"])
        self.assertIn("RSS of worker1 grew", verdict["failures"][0])

    def test_growing_p99_and_falling_throughput_each_fail(self) -> None:
        run = [minute(n, p99_ms=50 + 5 * n, per_s=100 - 2 * n) for n in range(30)]
        verdict = steady_state(run, judged_from_minute=12)
        self.assertFalse(verdict["ok"])
        self.assertGreater(verdict["p99_growth"], 0.10)
        self.assertGreater(verdict["throughput_drop"], 0.10)
        self.assertEqual(
            [failure.split(" ")[0] for failure in verdict["failures"]],
            ["p99", "throughput"],
            verdict["failures"],
        )

    def test_a_run_whose_last_minutes_deducted_nothing_fails_and_says_so(self) -> None:
        run = [minute(n) for n in range(30)]
        for sample in run[24:]:  # the last third: minutes 24-29
            sample["p99_ms"], sample["trades_per_s"] = None, 0.0
        verdict = steady_state(run, judged_from_minute=12)
        self.assertFalse(verdict["ok"])
        self.assertIsNone(verdict["p99_growth"])
        self.assertIn("was deducted: p99 unknown", verdict["failures"][0])
        self.assertIn("throughput fell", verdict["failures"][1])

    def test_the_warm_up_is_not_judged(self) -> None:
        # Everything grows during the first windows (no row is old enough to go yet), then holds.
        run = [minute(n, table_mib=4 * min(n, 15), rss_mib=100 + 10 * min(n, 12)) for n in range(1, 31)]
        self.assertTrue(steady_state(run, judged_from_minute=16)["ok"])
        self.assertFalse(steady_state(run, judged_from_minute=1)["ok"])

    def test_a_run_too_short_to_judge_is_not_ok_and_says_why(self) -> None:
        verdict = steady_state([minute(n) for n in range(5)], judged_from_minute=3)
        self.assertFalse(verdict["ok"])
        self.assertIn("too short to judge", verdict["failures"][0])

    def test_bytes_per_trade_is_the_slope_before_retention_deletes(self) -> None:
        def sample(n: int) -> dict[str, Any]:
            return {
                "minute": float(n),
                "trades_total": 1000 * n,
                "tables": {
                    "reliability_outboxmessage": {"total": 700_000 * n},
                    "trades_trade": {"total": 300_000 * n},
                },
            }

        sizes = bytes_per_trade([sample(n) for n in range(1, 9)], before_minute=5)
        self.assertEqual(sizes["minutes"], [1.0, 4.0])
        self.assertEqual(sizes["retained"], 700.0)
        self.assertEqual(sizes["record"], 300.0)
        self.assertEqual(sizes["total"], 1000.0)

    def test_the_retention_settings_keep_the_system_checks(self) -> None:
        from reliability.ops.retention import retention_horizons_check

        for window in (60.0, 300.0, 86_400.0):
            env = retention_env(window, window / 5)
            width_s, ahead = (
                float(env["RELIABILITY_PARTITION_WIDTH_S"]),
                int(env["RELIABILITY_PARTITIONS_AHEAD"]),
            )
            self.assertGreaterEqual(width_s, 1)  # reliability.E010
            self.assertGreaterEqual(ahead, 2)
            self.assertGreater(width_s * (ahead - 1), float(env["RELIABILITY_RETENTION_INTERVAL_S"]))
            self.assertEqual(
                retention_horizons_check(
                    dedupe_window_s=float(env["RELIABILITY_DEDUPE_WINDOW_S"]),
                    outbox_retention_s=float(env["RELIABILITY_OUTBOX_RETENTION_S"]),
                    max_message_age_s=float(env["RELIABILITY_MAX_MESSAGE_AGE_S"]),
                    reconcile_grace_s=float(env["RELIABILITY_RECONCILE_GRACE_S"]),
                    reconcile_max_attempts=5,
                    dead_letter_replay_window_s=float(env["RELIABILITY_DEAD_LETTER_REPLAY_WINDOW_S"]),
                ),
                [],
            )


@tag("soak", "integration")
class SoakShortTierTests(SimpleTestCase):
    """1.5 minutes at half the measured peak, retention windows of one minute (about 2 minutes)."""

    MINUTES = os.environ.get("SOAK_TEST_MINUTES", "1.5")

    def test_a_short_soak_through_retention_cycles_keeps_every_invariant(self) -> None:
        name = f"soak_t{os.getpid()}"

        def vhost_delete() -> None:
            with contextlib.suppress(BrokerAdminError):
                broker_admin().vhost_delete(name.replace("_", "-"))

        # The soak removes them itself unless it was killed before its finally.
        self.addCleanup(vhost_delete)
        self.addCleanup(database_drop, database_url(f"beans_{name}"))
        with tempfile.TemporaryDirectory(prefix="soak-test-") as workdir:
            results = Path(workdir) / "soak.json"
            argv = [
                *(sys.executable, "-m", "bench.soak", "--name", name, "--results", str(results)),
                *("--minutes", self.MINUTES, "--share", "0.5", "--peak-s", "10", "--producers", "8"),
                *("--retention-s", "60", "--retention-every-s", "10", "--sample-s", "20"),
                *("--warmup-minutes", "0.5"),
            ]
            run = subprocess.Popen(
                argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
            try:
                output, _ = run.communicate(timeout=900)  # a bound on a hung run
            except BaseException:
                run.send_signal(signal.SIGTERM)  # the soak cleans up in its finally
                output, _ = run.communicate(timeout=180)
                raise
            self.assertTrue(results.exists(), output[-5000:])
            result = json.loads(results.read_text())
            plots = sorted(path.name for path in (Path(workdir) / "soak").glob("*.png"))
        self.assertEqual(run.returncode, 0, output[-5000:])
        self.assertIsNone(result["stopped_early"])
        self.assertEqual(result["lost"], 0)
        self.assertEqual(result["duplicated_effects"], 0)
        self.assertEqual(set(result["invariants"]), {f"I{n}" for n in range(1, 11)})
        self.assertTrue(all(result["invariants"].values()), result["violations"])
        self.assertGreater(result["counts"]["ok"], 0)
        # Retention ran: it dropped slices (the checker counts their messages as past retention)
        # or deleted rows one by one (checked in full from the soak's copy).
        counts, copied = result["counts"], result["past_retention"]
        self.assertGreater(counts["past_outbox_retention"] + copied["outbox_rows"], 0)
        self.assertGreater(counts["past_message_log_retention"] + copied["message_log_rows"], 0)
        for key in ("minutes", "offered_per_s", "per_minute", "steady_state", "bytes_per_trade"):
            self.assertIn(key, result)
        for key in ("table_bytes_growth", "rss_growth", "p99_growth", "throughput_drop", "ok"):
            self.assertIn(key, result["steady_state"])
        self.assertGreaterEqual(len(result["per_minute"]), 4)
        for sample in result["per_minute"]:
            for key in (
                "trades_per_s", "p50_ms", "p99_ms", "tables", "dead_tuples", "autovacuum_runs",
                "wal_bytes_per_trade", "processes", "db_connections", "rabbitmq_rss", "queues",
            ):  # fmt: skip
                self.assertIn(key, sample)
            self.assertIsNotNone(sample["p99_ms"])
            self.assertLess(sample["backlog_s"], 60, "the pipeline kept up")
            self.assertEqual(
                set(sample["processes"]), {"web", "worker1", "housekeeping", "beat"}, sample["processes"]
            )
            for table in ("reliability_outboxmessage", "reliability_messagelog", "trades_trade"):
                self.assertGreater(sample["tables"][table]["heap"], 0)
        self.assertIn("table_bytes.png", plots)
        self.assertIn("rss.png", plots)
        self.assertIn("latency.png", plots)
