"""Write-side services of the trade service."""

import logging
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from beans.selectors import account_exists
from reliability.consumer import Message
from reliability.ids import message_id_new
from reliability.services import outbox_enqueue

from .exceptions import AccountNotFound, IdempotencyConflict, InvalidOutcome, TradeInvalid
from .models import Trade

logger = logging.getLogger(__name__)

# The bean service's contract: the task that deducts (its queues: settings.BEANS_QUEUES).
DEDUCT_TASK = "beans.deduct"
IDEMPOTENCY_KEY_MAX_LENGTH = 200


def _strict_positive_int(value: Any, *, field: str, maximum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TradeInvalid(f"{field} must be an integer, got {type(value).__name__}")
    if value <= 0:
        raise TradeInvalid(f"{field} must be positive, got {value}")
    if value > maximum:
        raise TradeInvalid(f"{field} must be at most {maximum}, got {value}")
    return value


def deduction_stream(account_id: int) -> str:
    """Return the stream of an account's deductions: always the same one per account."""
    return f"deductions.{account_id % settings.TRADES_DEDUCTION_STREAMS}"


def deduction_queue(account_id: int) -> str:
    """Return the queue partition of an account's stream: always the same one per stream."""
    stream_index = account_id % settings.TRADES_DEDUCTION_STREAMS
    return settings.BEANS_QUEUES[stream_index % len(settings.BEANS_QUEUES)]


def trade_place(*, account_id: Any, beans: Any, idempotency_key: str | None = None) -> tuple[Trade, bool]:
    """Record a trade and its deduction message in one transaction.

    Return ``(trade, created)``; ``created`` is False when ``idempotency_key`` was
    used before for the same trade, which is then returned unchanged.
    """
    account_id = _strict_positive_int(account_id, field="account", maximum=2**63 - 1)
    beans = _strict_positive_int(beans, field="beans", maximum=settings.TRADES_MAX_BEANS)
    if idempotency_key is not None and not 0 < len(idempotency_key) <= IDEMPOTENCY_KEY_MAX_LENGTH:
        raise TradeInvalid(f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_MAX_LENGTH} characters")
    if not account_exists(account_id=account_id):
        raise AccountNotFound(f"account {account_id} does not exist")
    with transaction.atomic():
        message_id = message_id_new()
        try:
            with transaction.atomic():
                trade = Trade.objects.create(
                    account_id=account_id,
                    beans=beans,
                    idempotency_key=idempotency_key,
                    deduction_message_id=message_id,
                )
        except IntegrityError:
            if idempotency_key is None:
                raise
            # Insert first: the unique key is the duplicate signal, even under a race.
            existing = Trade.objects.get(idempotency_key=idempotency_key)
            if (existing.account_id, existing.beans) != (account_id, beans):
                raise IdempotencyConflict(
                    f"Idempotency-Key {idempotency_key!r} was used for trade {existing.pk} "
                    "with a different account or amount"
                ) from None
            return existing, False
        outbox_enqueue(
            task_name=DEDUCT_TASK,
            queue=deduction_queue(account_id),
            stream=deduction_stream(account_id),
            payload={"trade_id": trade.pk, "account_id": account_id, "beans": beans},
            message_id=message_id,
        )
    logger.info("trade %d placed, deduction message %s", trade.pk, message_id)
    return trade, True


def trade_record_outcome(message: Message) -> str:
    """Settle a pending trade from the bean service's outcome (exactly once)."""
    payload = message.payload
    trade_id, outcome = payload.get("trade_id"), payload.get("outcome")
    if not isinstance(trade_id, int) or isinstance(trade_id, bool):
        raise InvalidOutcome(f"message {message.message_id}: trade_id must be an integer, got {trade_id!r}")
    if outcome not in {Trade.Status.DEDUCTED, Trade.Status.REJECTED}:
        raise InvalidOutcome(f"message {message.message_id}: unknown outcome {outcome!r}")
    try:
        trade = Trade.objects.select_for_update().get(pk=trade_id)
    except Trade.DoesNotExist as exc:
        raise InvalidOutcome(f"message {message.message_id}: no trade {trade_id!r}") from exc
    if str(trade.deduction_message_id) != payload.get("deduction_message_id"):
        raise InvalidOutcome(
            f"message {message.message_id}: outcome is for another deduction of trade {trade_id}"
        )
    balance_after = payload.get("balance_after")
    if balance_after is not None and (not isinstance(balance_after, int) or isinstance(balance_after, bool)):
        raise InvalidOutcome(f"message {message.message_id}: balance_after must be an integer or null")
    if trade.status != Trade.Status.PENDING:
        if trade.status == outcome:
            return "already settled"
        raise InvalidOutcome(
            f"message {message.message_id}: trade {trade_id} is {trade.status}, refusing to make it {outcome}"
        )
    now = timezone.now()
    trade.status = outcome
    trade.balance_after = balance_after
    trade.rejection_reason = "insufficient funds" if outcome == Trade.Status.REJECTED else ""
    trade.settled_at = now
    trade.updated_at = now
    trade.save(update_fields=["status", "balance_after", "rejection_reason", "settled_at", "updated_at"])
    return str(outcome)
