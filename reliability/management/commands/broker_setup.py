from typing import Any

from django.core.management.base import BaseCommand

from reliability.produce import publisher


class Command(BaseCommand):
    help = "Declare the project's exchanges, quorum queues and dead-letter queue (idempotent)."

    def handle(self, *args: Any, **options: Any) -> None:
        for name in publisher.broker_topology_declare():
            self.stdout.write(f"declared {name}")
