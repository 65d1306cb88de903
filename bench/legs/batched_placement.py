"""Exactly-once with batched placement: the same pipeline, trades placed many per call.

As ``bench/legs/exactly_once.py``, with each producer call placing ``--placement-batch`` trades
at once (``trades_place_many``, one transaction) and ``--batched-trades`` trades in all (it is
several times faster: more trades, a longer window), to measure what the one-trade placement
transaction costs the pipeline.
"""

import argparse

from bench.common import Children, log
from bench.figures import batch_size_lines, cpu_line
from bench.legs.exactly_once import ExactlyOnce, pipeline_measure


def measure(args: argparse.Namespace, children: Children, tag: str) -> ExactlyOnce:
    """Throughput and paced latency of the pipeline with trades placed ``--placement-batch`` per call."""
    batched = pipeline_measure(
        args, children, tag, total=args.batched_trades, placement_batch=args.placement_batch
    )
    log(
        f"  exactly-once with batched placement {batched.per_s:.1f}/s in {batched.seconds:.2f}s "
        f"(placement {batched.placement_per_s:.1f}/s), p50 {batched.p50_ms:.0f} ms, "
        f"p99 {batched.p99_ms:.0f} ms"
    )
    for line in batch_size_lines(batched.batch_sizes):
        log(f"  {line}")
    log(f"  {cpu_line(batched.cpu_s, batched.trades)}")
    if batched.paced:
        log(
            f"  paced at {batched.paced['rate_per_s']:.1f}/s: trade->deducted "
            f"p50 {batched.paced['p50_ms']:.0f} ms, p99 {batched.paced['p99_ms']:.0f} ms"
        )
    return batched
