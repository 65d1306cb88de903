"""manage.py trade_counts_recount: recount the settled trades' counters from the trades table."""

from typing import Any

from django.core.management.base import BaseCommand

from trades.services import trade_status_counts_recount


class Command(BaseCommand):
    help = (
        "Recount the per-status trade counters (beans_trades{status} on /metrics) from the trades "
        "table: after a rolling deploy whose old workers settled trades without counting them, or "
        "rows written by hand."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        counts = trade_status_counts_recount()
        self.stdout.write(f"recounted: {counts}")
