import json
from typing import Any

from django.core.management.base import BaseCommand

from reliability.selectors import (
    dead_letter_open_count,
    gaps_escalated_count,
    message_log_stats,
    outbox_pending_stats,
    queue_depths,
    stream_positions,
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
        "streams": stream_positions(),
    }


class Command(BaseCommand):
    help = "Show where the pipeline stands: trades, outbox, consumed, duplicates, dead letters, queues."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--json", action="store_true", help="print one JSON object")

    def handle(self, *args: Any, **options: Any) -> None:
        status = pipeline_status()
        if options["json"]:
            self.stdout.write(json.dumps(status, sort_keys=True))
            return
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
            line = "{:<32} {:>9} {:>9} {:>9} {:>10} {:>6} {:>7}"
            self.stdout.write(
                "\n" + line.format("stream", "produced", "watermark", "seen", "gaps found", "open", "healed")
            )
            for stream in status["streams"]:
                self.stdout.write(
                    line.format(
                        stream["stream"][:32],
                        "-" if stream["produced_seq"] is None else stream["produced_seq"],
                        stream["consumed_watermark"],
                        stream["max_seen"],
                        stream["gaps_found"],
                        stream["gaps_open"],
                        stream["gaps_healed"],
                    )
                )
