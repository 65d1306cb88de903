"""Read-side queries of the bean service."""

from collections.abc import Iterable

from django.db import router
from django.db.models import Count, Q, Sum

from .models import Account, LedgerEntry


def account_get(*, account_id: int) -> Account:
    """Return the account; raise ``Account.DoesNotExist`` when there is none."""
    return Account.objects.get(pk=account_id)


def account_exists(*, account_id: int) -> bool:
    return Account.objects.filter(pk=account_id).exists()


def account_exists_condition(param: str) -> tuple[str, str]:
    """An SQL condition true when the account ``%(param)s`` exists, and the database it holds for.

    For a caller that folds the check into a statement of its own on the same database.
    """
    using = router.db_for_read(Account) or "default"
    return f"EXISTS (SELECT 1 FROM {Account._meta.db_table} WHERE id = %({param})s::bigint)", using  # noqa: S608


def accounts_missing(*, account_ids: Iterable[int]) -> list[int]:
    """Return, sorted, the ids among ``account_ids`` that name no account."""
    wanted = set(account_ids)
    found = set(Account.objects.filter(pk__in=wanted).values_list("pk", flat=True))
    return sorted(wanted - found)


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
