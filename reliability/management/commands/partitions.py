from typing import Any

from django.core.management.base import BaseCommand, CommandError

from reliability.conf import reliability_databases
from reliability.ops import retention


class Command(BaseCommand):
    help = (
        "Drop the outbox and message-log partitions past retention and make the ones ahead, in every "
        "reliability database. Run it as the tables' owner where the app role may not run DDL."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        for alias in reliability_databases():
            counts = retention.retention_partitions_maintain(using=alias)
            self.stdout.write(
                f"{alias}: {counts['partitions_dropped']} partitions dropped, {counts['partitions_made']} made"
            )
            if counts["partitions_failed"]:
                raise CommandError(f"the partitions of {alias} could not be maintained: see the log above")
