"""The bean service's published interface: all that another service may use of it.

* **The deduction it accepts**: task ``DEDUCT_TASK`` (``beans.tasks.deduct``) on the queues of
  ``settings.BEANS_QUEUES``, payload ``{"trade_id", "account_id", "beans"}``, one ordered stream
  per account's partition.
* **The outcome it reports**: task ``OUTCOME_TASK`` on ``OUTCOME_QUEUE``, payload ``{"trade_id",
  "outcome": "deducted" | "rejected", "balance_after", "deduction_message_id"}``.
* **Its accounts, read**: whether accounts exist, and which (``account_exists``,
  ``accounts_missing``, ``account_ids``), and ``accounts_all`` for a caller that checks an account
  in a query of its own on the same database (``accounts_database``).

Both sides name the same tasks from here, so a rename cannot leave one side publishing to a task
the other no longer has. The reads are here, not in ``selectors`` (the service's own), because the
service's writers import this module too. Importing it does not touch Django's models (each read
imports them when called), so tools may read the names before Django is set up.
"""

from collections.abc import Iterable
from typing import TYPE_CHECKING

from django.db import router

if TYPE_CHECKING:
    from django.db.models import QuerySet

    from .models import Account

# Trades → beans: deduct beans from an account (``beans.tasks.deduct``).
DEDUCT_TASK = "beans.deduct"
# Beans → trades: the outcome of a deduction (``trades.tasks.record_outcome``).
OUTCOME_TASK = "trades.record_outcome"
OUTCOME_QUEUE = "trades"


def account_exists(*, account_id: int) -> bool:
    from .models import Account

    return Account.objects.filter(pk=account_id).exists()


def accounts_missing(*, account_ids: Iterable[int]) -> list[int]:
    """Return, sorted, the ids among ``account_ids`` that name no account."""
    from .models import Account

    wanted = set(account_ids)
    found = set(Account.objects.filter(pk__in=wanted).values_list("pk", flat=True))
    return sorted(wanted - found)


def account_ids() -> list[int]:
    """Return the id of every account, in order."""
    from .models import Account

    return list(Account.objects.order_by("id").values_list("id", flat=True))


def accounts_database() -> str:
    """Return the alias of the database that holds the accounts."""
    from .models import Account

    return router.db_for_read(Account) or "default"


def accounts_all() -> "QuerySet[Account]":
    """Every account, as a QuerySet to narrow or compose (``Exists``) in the caller's own query."""
    from .models import Account

    return Account.objects.all()
