"""Write-side services of the bean service: accounts, credits, deductions."""

import logging
from typing import Any

from django.conf import settings
from django.db import connections, models, transaction
from django.utils import timezone

from reliability import Message, outbox_enqueue_many

from .contracts import OUTCOME_QUEUE, OUTCOME_TASK
from .exceptions import AccountNotFound, InvalidAmount, InvalidDeduction
from .models import Account, LedgerEntry

logger = logging.getLogger(__name__)

BALANCE_MAX = 2**63 - 1  # PostgreSQL bigint


class DeductionOutcome(models.TextChoices):
    """What a deduction message did: the message-log outcome, and the outcome sent back."""

    DEDUCTED = "deducted", "Deducted"
    REJECTED = "rejected", "Rejected: insufficient funds"


def _positive_int(value: Any, *, what: str) -> int:
    # Bounded by bigint: a larger number would fail in the database, not here, and look transient.
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= BALANCE_MAX:
        raise InvalidAmount(f"{what} must be a positive integer of at most {BALANCE_MAX}, got {value!r}")
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


def _deduction_fields(message: Message) -> tuple[int, int, int]:
    """Return (trade_id, account_id, beans) of a deduction message, or raise ``InvalidDeduction``."""
    payload = message.payload
    try:
        return (
            _positive_int(payload.get("trade_id"), what="trade_id"),
            _positive_int(payload.get("account_id"), what="account_id"),
            _positive_int(payload.get("beans"), what="beans"),
        )
    except InvalidAmount as exc:
        raise InvalidDeduction(f"message {message.message_id}: {exc}") from exc


def _outcome_message(
    message: Message, *, trade_id: int, outcome: str, balance_after: int
) -> tuple[str, dict[str, Any], None]:
    """The outcome message to the trade service: (stream, payload, message_id) for the outbox."""
    return (
        f"outcomes.{message.stream}",
        {
            "trade_id": trade_id,
            "outcome": outcome,
            "balance_after": balance_after,
            "deduction_message_id": str(message.message_id),
        },
        None,
    )


def deductions_apply(messages: list[Message]) -> list[str]:
    """Deduct each message's beans once, or reject it for insufficient funds; report back.

    Set-based SQL: one lock, one update, two inserts, however many messages. Runs
    inside the consumer middleware's transaction, with the outcome messages to the
    trade service. The accounts are locked in id order (one statement), so
    concurrent deductions from one account serialize and the balance check cannot
    race; each message is then decided in the order given, so
    several deductions from one account see each other's balance, exactly as if
    applied one by one. A message for an unknown account or with a bad payload
    raises: the middleware then applies the batch one by one, and that message
    alone is dead-lettered.
    """
    fields = [_deduction_fields(message) for message in messages]
    account_ids = sorted({account_id for _, account_id, _ in fields})
    accounts = {
        account.pk: account
        for account in Account.objects.select_for_update().filter(pk__in=account_ids).order_by("pk")
    }
    for message, (_, account_id, _) in zip(messages, fields, strict=True):
        if account_id not in accounts:
            raise AccountNotFound(f"message {message.message_id}: account {account_id} does not exist")
    balances = {account_id: account.balance for account_id, account in accounts.items()}
    now = timezone.now()
    entries: list[tuple[int, int, int, Any, int]] = []  # (account, beans, balance_after, message, trade)
    outcomes: list[str] = []
    outcome_messages = []
    for message, (trade_id, account_id, beans) in zip(messages, fields, strict=True):
        if balances[account_id] >= beans:
            balances[account_id] -= beans
            entries.append((account_id, beans, balances[account_id], message.message_id, trade_id))
            outcome = DeductionOutcome.DEDUCTED
        else:
            outcome = DeductionOutcome.REJECTED
            logger.info(
                "message %s: trade %d rejected, account %d has %d beans, needs %d",
                message.message_id,
                trade_id,
                account_id,
                balances[account_id],
                beans,
            )
        outcomes.append(outcome)
        outcome_messages.append(
            _outcome_message(message, trade_id=trade_id, outcome=outcome, balance_after=balances[account_id])
        )
    changed = [
        account_id for account_id in account_ids if balances[account_id] != accounts[account_id].balance
    ]
    with connections[settings.BEANS_DATABASE].cursor() as cursor:
        if changed:
            cursor.execute(
                f"UPDATE {Account._meta.db_table} AS a SET balance = u.b, updated_at = %s "  # noqa: S608
                "FROM unnest(%s::bigint[], %s::bigint[]) AS u(i, b) WHERE a.id = u.i",
                [now, changed, [balances[account_id] for account_id in changed]],
            )
        if entries:
            # One statement for every deduction (the ORM's bulk_create quotes each value on its
            # own: a tenth of a worker's CPU in the profile); the table's constraints still apply.
            cursor.execute(
                f"INSERT INTO {LedgerEntry._meta.db_table} "  # noqa: S608
                "(account_id, kind, beans, balance_after, message_id, trade_id, note, created_at) "
                "SELECT u.a, %s, u.b, u.after, u.m, u.t, '', %s "
                "FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[], %s::uuid[], %s::bigint[]) "
                "AS u(a, b, after, m, t)",
                [LedgerEntry.Kind.DEDUCTION, now, *map(list, zip(*entries, strict=True))],
            )
    outbox_enqueue_many(
        task_name=OUTCOME_TASK, queue=OUTCOME_QUEUE, messages=outcome_messages, using=settings.BEANS_DATABASE
    )
    return outcomes


def deduction_apply(message: Message) -> str:
    """Deduct a trade's beans once, or reject it for insufficient funds; report back.

    Runs inside the consumer middleware's transaction, after the message-log row
    was inserted. One message is a batch of one: ``deductions_apply`` holds the rule.
    """
    (outcome,) = deductions_apply([message])
    return outcome
