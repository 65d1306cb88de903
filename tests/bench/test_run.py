"""The bench's runner (``bench/run.py``): which legs run, and a summary of the legs that did."""

import io
from contextlib import redirect_stdout

from django.test import SimpleTestCase

from bench.legs import LEGS
from bench.report import Repeat, report, summarize
from bench.run import parse_args


class LegsTests(SimpleTestCase):
    def test_every_leg_runs_by_default(self) -> None:
        args = parse_args([])

        self.assertEqual(args.legs, list(LEGS))
        self.assertFalse(args.no_http)

    def test_a_leg_left_out_gets_its_options_skip_value(self) -> None:
        args = parse_args(["--legs", "raw_amqp"])

        self.assertEqual(args.legs, ["raw_amqp"])
        self.assertEqual(
            (args.placement_trades, args.batched_trades, args.alternatives, args.no_http, args.no_raw),
            (0, 0, [], True, False),
        )
        self.assertEqual((args.metrics_scrape_rows, args.history_rows), (0, 0))

    def test_the_options_that_skip_a_leg_leave_it_out(self) -> None:
        args = parse_args(["--no-http", "--placement-batch", "0", "--history-rows", "0"])

        self.assertEqual(args.legs, ["placement", "exactly_once", "baseline", "raw_amqp", "metrics_scrape"])

    def test_the_alternatives_alone_keep_the_web_tier(self) -> None:
        args = parse_args(["--legs", "alternatives", "--alternatives", "noop_view"])

        self.assertEqual(
            (args.legs, args.alternatives, args.no_http), (["alternatives"], ["noop_view"], False)
        )


class SummaryTests(SimpleTestCase):
    def test_a_run_of_one_leg_summarizes_and_reports_it_alone(self) -> None:
        args = parse_args(["--legs", "raw_amqp", "--repeats", "2"])
        raw = {"messages": 10, "seconds": 1.0, "per_s": 10.0, "publish_per_s": 20.0}

        summary = summarize(args, [Repeat(raw_amqp=raw), Repeat(raw_amqp={**raw, "per_s": 30.0})])
        out = io.StringIO()
        with redirect_stdout(out):
            report(summary)

        self.assertEqual(summary["raw_amqp_per_s"], 20.0)
        self.assertIsNone(summary["exactly_once_per_s"])
        self.assertIsNone(summary["ratio_vs_baseline"])
        self.assertIn("raw AMQP     :      20.0 msgs/s", out.getvalue())
