import argparse
import json
import math
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from reliability.ops.health import stream_health
from reliability.selectors import (
    dead_letter_open_count,
    gaps_escalated_count,
    message_log_stats,
    outbox_pending_stats,
    queue_depths,
)
from trades.selectors import trade_counts_by_status


def pipeline_status() -> dict[str, Any]:
    return {
        "trades": trade_counts_by_status(),
        **outbox_pending_stats(),
        **message_log_stats(),
        "dead_letters": dead_letter_open_count(),
        "gaps_escalated": gaps_escalated_count(),
        "queue_depths": queue_depths(),
        "streams": stream_health(),
    }


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = 0.0
    if not (number > 0 and math.isfinite(number)):
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, got {value!r}")
    return number


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of 1 or more, got {value!r}")
    return number


class Command(BaseCommand):
    help = (
        "Show where the pipeline stands: trades, outbox, consumed, duplicates, dead letters, queues, "
        "and each stream's lag. --watch redraws it every --interval seconds until Ctrl-C."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--json", action="store_true", help="print one JSON object (one line per interval with --watch)"
        )
        parser.add_argument(
            "--watch", action="store_true", help="redraw every --interval seconds until Ctrl-C"
        )
        parser.add_argument(
            "--interval", type=_positive_float, default=2.0, help="seconds between redraws (default 2)"
        )
        parser.add_argument("--count", type=_positive_int, help="with --watch: stop after this many redraws")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["count"] is not None and not options["watch"]:
            raise CommandError("--count needs --watch")
        if not options["watch"]:
            self._show(pipeline_status(), as_json=options["json"])
            return
        shown = 0
        try:
            while True:
                if not options["json"] and self.stdout.isatty():
                    self.stdout.write("\033[H\033[2J", ending="")  # clear the terminal, cursor home
                elif not options["json"] and shown:
                    self.stdout.write("")
                self._show(pipeline_status(), as_json=options["json"], header=not options["json"])
                self.stdout.flush()
                shown += 1
                if options["count"] is not None and shown >= options["count"]:
                    return
                time.sleep(options["interval"])
        except KeyboardInterrupt:
            self.stdout.write("")

    def _show(self, status: dict[str, Any], *, as_json: bool, header: bool = False) -> None:
        if as_json:
            self.stdout.write(json.dumps(status, sort_keys=True))
            return
        if header:
            self.stdout.write(f"pipeline status at {timezone.now():%Y-%m-%d %H:%M:%S} UTC (Ctrl-C to stop)\n")
        rows = [(f"trades {name}", count) for name, count in status["trades"].items()]
        rows += [
            ("outbox pending", status["outbox_pending"]),
            ("outbox oldest pending age (s)", status["outbox_oldest_pending_age_s"]),
            ("messages consumed", status["consumed"]),
            ("duplicate deliveries suppressed", status["duplicates_suppressed"]),
            ("dead letters (open)", status["dead_letters"]),
            ("gaps escalated (need a human)", status["gaps_escalated"]),
        ]
        rows += [
            (f"queue {name} depth", "unknown" if depth is None else depth)
            for name, depth in status["queue_depths"].items()
        ]
        width = max(len(label) for label, _ in rows)
        for label, value in rows:
            self.stdout.write(f"{label:<{width}}  {value}")
        if status["streams"]:
            line = "{:<32} {:>9} {:>9} {:>7} {:>9} {:>10} {:>6} {:>7}"
            self.stdout.write(
                "\n"
                + line.format(
                    "stream", "produced", "watermark", "lag", "seen", "gaps found", "open", "healed"
                )
            )
            for stream in status["streams"]:
                self.stdout.write(
                    line.format(
                        stream["stream"][:32],
                        "-" if stream["produced_seq"] is None else stream["produced_seq"],
                        stream["consumed_watermark"],
                        "-" if stream["lag"] is None else stream["lag"],
                        stream["max_seen"],
                        stream["gaps_found"],
                        stream["gaps_open"],
                        stream["gaps_healed"],
                    )
                )
