"""Write-side services of the trade service."""

import logging
from contextlib import nullcontext
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
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
        # A savepoint only where a duplicate key is expected: it costs two round trips.
        guard = transaction.atomic() if idempotency_key is not None else nullcontext()
        try:
            with guard:
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


def _outcome_fields(message: Message) -> tuple[int, str, int | None]:
    """Return (trade_id, outcome, balance_after) of an outcome message, or raise ``InvalidOutcome``."""
    payload = message.payload
    trade_id, outcome = payload.get("trade_id"), payload.get("outcome")
    if not isinstance(trade_id, int) or isinstance(trade_id, bool):
        raise InvalidOutcome(f"message {message.message_id}: trade_id must be an integer, got {trade_id!r}")
    if outcome not in {Trade.Status.DEDUCTED, Trade.Status.REJECTED}:
        raise InvalidOutcome(f"message {message.message_id}: unknown outcome {outcome!r}")
    balance_after = payload.get("balance_after")
    if balance_after is not None and (not isinstance(balance_after, int) or isinstance(balance_after, bool)):
        raise InvalidOutcome(f"message {message.message_id}: balance_after must be an integer or null")
    return trade_id, str(outcome), balance_after


def _trade_of(message: Message, trade: Trade | None, trade_id: int) -> Trade:
    if trade is None:
        raise InvalidOutcome(f"message {message.message_id}: no trade {trade_id!r}")
    if str(trade.deduction_message_id) != message.payload.get("deduction_message_id"):
        raise InvalidOutcome(
            f"message {message.message_id}: outcome is for another deduction of trade {trade_id}"
        )
    return trade


def trade_record_outcome(message: Message) -> str:
    """Settle a pending trade from the bean service's outcome (exactly once)."""
    trade_id, outcome, balance_after = _outcome_fields(message)
    trade = _trade_of(message, Trade.objects.select_for_update().filter(pk=trade_id).first(), trade_id)
    if trade.status != Trade.Status.PENDING:
        if trade.status == outcome:
            return "already settled"
        raise InvalidOutcome(
            f"message {message.message_id}: trade {trade_id} is {trade.status}, refusing to make it {outcome}"
        )
    now = timezone.now()
    trade.status = outcome
    trade.balance_after = balance_after
    trade.rejection_reason = _rejection_reason(outcome)
    trade.settled_at = now
    trade.updated_at = now
    trade.save(update_fields=["status", "balance_after", "rejection_reason", "settled_at", "updated_at"])
    return str(outcome)


def _rejection_reason(outcome: str) -> str:
    return "insufficient funds" if outcome == Trade.Status.REJECTED else ""


def trades_record_outcomes(messages: list[Message]) -> list[str]:
    """``trade_record_outcome`` for a batch: one lock and one update for all of its trades.

    Every trade must still be pending (anything else, e.g. an outcome seen before
    under another message id, raises and the middleware goes one by one).
    """
    fields = [_outcome_fields(message) for message in messages]
    ids = sorted({trade_id for trade_id, _, _ in fields})
    trades = {
        trade.pk: trade for trade in Trade.objects.select_for_update().filter(pk__in=ids).order_by("pk")
    }
    if len(ids) < len(fields):
        raise InvalidOutcome("two outcomes for one trade in a batch")
    for message, (trade_id, _, _) in zip(messages, fields, strict=True):
        trade = _trade_of(message, trades.get(trade_id), trade_id)
        if trade.status != Trade.Status.PENDING:
            raise InvalidOutcome(f"message {message.message_id}: trade {trade_id} is already {trade.status}")
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {Trade._meta.db_table} AS t SET status = u.s, balance_after = u.b, "  # noqa: S608
            "rejection_reason = u.r, settled_at = %s, updated_at = %s "
            "FROM unnest(%s::bigint[], %s::text[], %s::bigint[], %s::text[]) AS u(i, s, b, r) WHERE t.id = u.i",
            [
                now,
                now,
                [trade_id for trade_id, _, _ in fields],
                [outcome for _, outcome, _ in fields],
                [balance_after for _, _, balance_after in fields],
                [_rejection_reason(outcome) for _, outcome, _ in fields],
            ],
        )
    return [outcome for _, outcome, _ in fields]
