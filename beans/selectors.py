"""Read-side queries of the bean service (those other services may make: ``beans.contracts``)."""

from django.db.models import Count, Q, Sum

from .models import Account, LedgerEntry


def account_get(*, account_id: int) -> Account:
    """Return the account; raise ``Account.DoesNotExist`` when there is none."""
    return Account.objects.get(pk=account_id)


def ledger_totals_by_account() -> dict[int, dict[str, int]]:
    """Return, per account, its balance and the sums of its ledger entries by kind."""
    rows = Account.objects.annotate(
        credited=Sum("entries__beans", filter=~Q(entries__kind=LedgerEntry.Kind.DEDUCTION), default=0),
        deducted=Sum("entries__beans", filter=Q(entries__kind=LedgerEntry.Kind.DEDUCTION), default=0),
        deductions=Count("entries", filter=Q(entries__kind=LedgerEntry.Kind.DEDUCTION)),
    ).values("id", "balance", "credited", "deducted", "deductions")
    return {row["id"]: row for row in rows}


def deductions_by_message_id() -> dict[str, int]:
    """Return how many deduction entries each message_id produced (1 expected)."""
    rows = (
        LedgerEntry.objects.filter(kind=LedgerEntry.Kind.DEDUCTION)
        .values("message_id")
        .annotate(n=Count("id"))
        .values_list("message_id", "n")
    )
    return {str(message_id): n for message_id, n in rows}
