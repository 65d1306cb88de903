import time
from typing import Any

from django.core.management.base import BaseCommand

from reliability import services


class Command(BaseCommand):
    help = "Publish pending outbox messages (what the beat relay task does), once or in a loop."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--loop", action="store_true", help="keep relaying until interrupted")
        parser.add_argument("--interval", type=float, default=1.0, help="seconds between sweeps with --loop")
        parser.add_argument("--database", default="default", help="database alias holding the outbox")

    def handle(self, *args: Any, loop: bool, interval: float, database: str, **options: Any) -> None:
        while True:
            sent = services.outbox_relay_batch(using=database)
            self.stdout.write(f"relayed {sent} messages")
            if not loop:
                return
            if not sent:
                time.sleep(interval)
