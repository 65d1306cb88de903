"""The producing side: a trade committed with its deduction on its way, two ways."""

from django.db import IntegrityError, transaction

from . import tasks
from .models import Trade


class AccountNotFound(Exception):
    """The trade names no account: nothing was written."""


def trade_place_best_practice_celery(*, account_id: int, beans: int, client_id: int) -> Trade:
    """Commit the trade, then publish its deduction (``on_commit`` + ``delay``).

    The publish happens after the commit and outside it: a broker that refuses it (with
    confirms, the ``delay`` raises) or a process that dies in between leaves a committed
    trade with no deduction on its way, and nothing retries it. That is the gap an outbox
    closes; this is what most Celery users run.
    """
    try:
        with transaction.atomic():
            trade = Trade.objects.create(
                via=Trade.Via.BEST_PRACTICE_CELERY, account_id=account_id, beans=beans, client_id=client_id
            )
            transaction.on_commit(lambda: tasks.deduct_best_practice.delay(trade.pk, account_id, beans))
    except IntegrityError as exc:  # the deferred foreign key, at commit: no such account
        raise AccountNotFound(f"account {account_id} does not exist") from exc
    return trade


def trade_place_django_celery_outbox(*, account_id: int, beans: int, client_id: int) -> Trade:
    """Commit the trade and its deduction's outbox row together (``OutboxCelery``: ``delay``
    inside the transaction writes the row); the relay publishes it later."""
    try:
        with transaction.atomic():
            trade = Trade.objects.create(
                via=Trade.Via.DJANGO_CELERY_OUTBOX, account_id=account_id, beans=beans, client_id=client_id
            )
            tasks.deduct_outbox.delay(trade.pk, account_id, beans)
    except IntegrityError as exc:
        raise AccountNotFound(f"account {account_id} does not exist") from exc
    return trade
