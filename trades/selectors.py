"""Read-side queries of the trade service."""

from django.db import connections

from .models import Trade, TradeStatusCount


def trade_get(*, trade_id: int) -> Trade:
    return Trade.objects.get(pk=trade_id)


def trades_of_account(*, account_id: int, limit: int = 50) -> list[Trade]:
    """Return an account's most recent trades, newest first."""
    return list(Trade.objects.filter(account_id=account_id).order_by("-id")[:limit])


def trade_counts_by_status() -> dict[str, int]:
    """Return how many trades are in each status now, at a cost that does not grow with the history.

    Pending trades, the backlog, are counted (an index-only scan of ``trade_status_created_idx``);
    settled ones are ``TradeStatusCount``'s shards summed. One statement, so one snapshot: a trade
    settling meanwhile is counted once, as pending or as settled.
    """
    counts = {status: 0 for status in Trade.Status.values}
    with connections[Trade.objects.db].cursor() as cursor:
        cursor.execute(
            f"SELECT %s::text, count(*) FROM {Trade._meta.db_table} WHERE status = %s "  # noqa: S608 - no user input
            f"UNION ALL SELECT status, sum(count) FROM {TradeStatusCount._meta.db_table} GROUP BY status",
            [Trade.Status.PENDING, Trade.Status.PENDING],
        )
        for status, count in cursor.fetchall():
            counts[status] = int(count)
    return counts
