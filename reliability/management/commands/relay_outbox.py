from typing import Any

from django.core.management.base import BaseCommand

from reliability.conf import settings
from reliability.produce.relay import RelayLoop, outbox_relay_batch


class Command(BaseCommand):
    help = (
        "Publish pending outbox messages once (what the beat sweep does), or with --loop run the "
        "relay loop in the foreground (what every worker runs in a thread) until interrupted."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--loop", action="store_true", help="run the relay loop until interrupted")
        parser.add_argument("--database", default="default", help="database alias holding the outbox")

    def handle(self, *args: Any, loop: bool, database: str, **options: Any) -> None:
        if not loop:
            sent = outbox_relay_batch(using=database)
            self.stdout.write(f"relayed {sent} messages")
            return
        relay = RelayLoop(using=database, linger_s=settings.RELIABILITY_RELAY_LINGER_MS / 1000)
        self.stdout.write(f"relay loop for {database}: standing by for the lead (Ctrl-C stops it)")
        try:
            relay.run()  # in this thread: returns only when stopped
        except KeyboardInterrupt:
            relay.stop(timeout=0)
        self.stdout.write(f"relay loop for {database} stopped after {relay.relayed} messages")
