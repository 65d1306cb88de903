"""Read-side queries of the trade service."""

from django.db.models import Count

from .models import Trade


def trade_get(*, trade_id: int) -> Trade:
    return Trade.objects.get(pk=trade_id)


def trades_of_account(*, account_id: int, limit: int = 50) -> list[Trade]:
    """Return an account's most recent trades, newest first."""
    return list(Trade.objects.filter(account_id=account_id).order_by("-id")[:limit])


def trade_counts_by_status() -> dict[str, int]:
    counts = {status: 0 for status in Trade.Status.values}
    for row in Trade.objects.values("status").annotate(n=Count("id")):
        counts[row["status"]] = row["n"]
    return counts
