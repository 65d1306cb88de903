"""The consuming side: the deduction, as a user of plain Celery writes it (at-least-once)."""

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from beans.models import Account

from .models import Deduction, Trade


@transaction.atomic
def deduction_apply(*, trade_id: int, account_id: int, beans: int) -> bool:
    """Take ``beans`` from the account if it has them, record it and settle the trade, in one transaction.

    Return whether the beans were taken. No message log: a message delivered twice deducts
    twice (the bench counts it). The accounts are in the default database here (one
    database: ``BEANS_DATABASE_URL`` unset), so one transaction covers all three writes.
    """
    now = timezone.now()
    taken = Account.objects.filter(pk=account_id, balance__gte=beans).update(
        balance=F("balance") - beans, updated_at=now
    )
    if taken:
        Deduction.objects.create(trade_id=trade_id, account_id=account_id, beans=beans, created_at=now)
    Trade.objects.filter(pk=trade_id).update(
        status=Trade.Status.DEDUCTED if taken else Trade.Status.REJECTED, settled_at=now
    )
    return bool(taken)
