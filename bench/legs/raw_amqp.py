"""Raw AMQP: what the broker alone does, no Celery and no database.

Persistent publishes with batched confirms to a quorum queue, consumed with one manual ack per
message by W processes (``bench/rawamqp.py``).
"""

import argparse

from bench.common import broker, log, queues_reset


def measure(args: argparse.Namespace) -> dict[str, float]:
    """Round trip of ``--raw-messages`` persistent messages through the bench's vhost, W consumers."""
    from bench.rawamqp import queue_declare, round_trip
    from reliability.conf import settings

    queues_reset()
    queue_declare(
        broker(),
        dead_letter_exchange=settings.RELIABILITY_DEAD_LETTER_EXCHANGE,
        delivery_limit=settings.RELIABILITY_DELIVERY_LIMIT,
    )
    result = round_trip(
        broker(),
        messages=args.raw_messages,
        consumers=args.workers,
        prefetch=args.concurrency * settings.CELERY_WORKER_PREFETCH_MULTIPLIER,
        timeout=args.timeout,
    )
    raw = {
        "messages": result.messages,
        "seconds": result.seconds,
        "per_s": result.per_s,
        "publish_per_s": result.messages / result.publish_seconds,
    }
    log(f"  raw AMQP {raw['per_s']:.0f}/s in {raw['seconds']:.2f}s")
    return raw
