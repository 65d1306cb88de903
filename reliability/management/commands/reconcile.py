from typing import Any

from django.core.management.base import BaseCommand

from reliability.ops import reconciler


class Command(BaseCommand):
    help = "Run one reconciler pass: re-publish gaps and lost tails, relay stuck outbox rows."

    def handle(self, *args: Any, **options: Any) -> None:
        for run in reconciler.reconcile_all():
            self.stdout.write(
                f"{run.database}: {run.outbox_relayed} outbox rows relayed, {run.tail_gaps_found} tail gaps found, "
                f"{run.republished} republished, {run.not_in_outbox} not in any outbox, "
                f"{run.escalated} escalated, {run.gaps_open} gaps open"
            )
