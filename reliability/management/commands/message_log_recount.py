from typing import Any

from django.core.management.base import BaseCommand

from reliability.conf import reliability_databases
from reliability.consume.message_log import message_log_recount


class Command(BaseCommand):
    help = (
        "Make the message log's counters (/metrics, the health page, pipeline_status) agree with its rows "
        "again, in every database of RELIABILITY_DATABASES: after rows were written around them (workers "
        "of an older version during an upgrade, SQL by hand, a restore). Blocks consumers while it counts."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        for alias in reliability_databases():
            counted = message_log_recount(using=alias)
            self.stdout.write(
                f"{alias}: {counted['rows']} message-log rows, {counted['redeliveries']} redeliveries"
            )
