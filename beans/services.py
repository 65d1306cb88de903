"""Write-side services of the bean service: accounts, credits, deductions."""

import logging
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from reliability.consumer import Message
from reliability.services import outbox_enqueue

from .exceptions import AccountNotFound, InvalidAmount, InvalidDeduction
from .models import Account, LedgerEntry

logger = logging.getLogger(__name__)

# The trade service's contract: the task that consumes our outcomes, and its queue.
OUTCOME_TASK = "trades.record_outcome"
OUTCOME_QUEUE = "trades"
BALANCE_MAX = 2**63 - 1  # PostgreSQL bigint


class DeductionOutcome:
    DEDUCTED = "deducted"
    REJECTED = "rejected"


def _positive_int(value: Any, *, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise InvalidAmount(f"{what} must be a positive integer, got {value!r}")
    return value


def account_create(*, owner: str, balance: int = 0) -> Account:
    """Open an account; a positive opening balance is written as its first ledger entry."""
    if not isinstance(balance, int) or isinstance(balance, bool) or balance < 0:
        raise InvalidAmount(f"opening balance must be a non-negative integer, got {balance!r}")
    with transaction.atomic(using=settings.BEANS_DATABASE):
        account = Account.objects.create(owner=owner, balance=balance)
        if balance:
            LedgerEntry.objects.create(
                account=account, kind=LedgerEntry.Kind.OPENING, beans=balance, balance_after=balance
            )
    return account


def account_credit(*, account_id: int, beans: int, note: str = "") -> LedgerEntry:
    """Add beans to an account, through a ledger entry."""
    beans = _positive_int(beans, what="beans")
    with transaction.atomic(using=settings.BEANS_DATABASE):
        try:
            account = Account.objects.select_for_update().get(pk=account_id)
        except Account.DoesNotExist as exc:
            raise AccountNotFound(f"account {account_id} does not exist") from exc
        if beans > BALANCE_MAX - account.balance:
            raise InvalidAmount(f"crediting {beans} beans would overflow account {account_id}'s balance")
        account.balance += beans
        account.updated_at = timezone.now()
        account.save(update_fields=["balance", "updated_at"])
        return LedgerEntry.objects.create(
            account=account,
            kind=LedgerEntry.Kind.CREDIT,
            beans=beans,
            balance_after=account.balance,
            note=note,
        )


def deduction_apply(message: Message) -> str:
    """Deduct a trade's beans once, or reject it for insufficient funds; report back.

    Runs inside the consumer middleware's transaction, after the message-log row
    was inserted. The account row is locked, so concurrent deductions from one
    account serialize and the balance check cannot race. The outcome message to
    the trade service commits in the same transaction.
    """
    payload = message.payload
    try:
        trade_id = _positive_int(payload.get("trade_id"), what="trade_id")
        account_id = _positive_int(payload.get("account_id"), what="account_id")
        beans = _positive_int(payload.get("beans"), what="beans")
    except InvalidAmount as exc:
        raise InvalidDeduction(f"message {message.message_id}: {exc}") from exc
    try:
        account = Account.objects.select_for_update().get(pk=account_id)
    except Account.DoesNotExist as exc:
        raise AccountNotFound(f"message {message.message_id}: account {account_id} does not exist") from exc
    if account.balance >= beans:
        account.balance -= beans
        account.updated_at = timezone.now()
        account.save(update_fields=["balance", "updated_at"])
        LedgerEntry.objects.create(
            account=account,
            kind=LedgerEntry.Kind.DEDUCTION,
            beans=beans,
            balance_after=account.balance,
            message_id=message.message_id,
            trade_id=trade_id,
        )
        outcome = DeductionOutcome.DEDUCTED
    else:
        outcome = DeductionOutcome.REJECTED
        logger.info(
            "message %s: trade %d rejected, account %d has %d beans, needs %d",
            message.message_id,
            trade_id,
            account_id,
            account.balance,
            beans,
        )
    outbox_enqueue(
        task_name=OUTCOME_TASK,
        queue=OUTCOME_QUEUE,
        stream=f"outcomes.{message.stream}",
        payload={
            "trade_id": trade_id,
            "outcome": outcome,
            "balance_after": account.balance,
            "deduction_message_id": str(message.message_id),
        },
        using=settings.BEANS_DATABASE,
    )
    return outcome
