"""Write-side services of the trade service."""

import logging
import uuid
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from functools import cache
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, router, transaction
from django.db.models import BigIntegerField
from django.db.models.expressions import RawSQL
from django.utils import timezone

from beans.contracts import DEDUCT_TASK, account_exists, accounts_all, accounts_database, accounts_missing
from reliability import Message, message_id_new, outbox_enqueue_many, outbox_enqueue_with_row

from .exceptions import AccountNotFound, IdempotencyConflict, InvalidOutcome, TradeInvalid
from .models import TRADE_STATUS_COUNT_SHARDS, Trade, TradeStatusCount

logger = logging.getLogger(__name__)

IDEMPOTENCY_KEY_MAX_LENGTH = 200


@dataclass(frozen=True, slots=True)
class TradeOrder:
    """One trade to place: take ``beans`` from account ``account_id``."""

    account_id: int
    beans: int


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


def deduction_stream_queue(stream: str) -> str:
    """Return the queue partition of a deduction stream (``deduction_stream``) under the current settings."""
    return deduction_queue(int(stream.rsplit(".", 1)[1]))


def _order_validated(account_id: Any, beans: Any, *, where: str = "") -> tuple[int, int]:
    """Return ``(account_id, beans)`` of one trade as integers, or raise ``TradeInvalid``."""
    return (
        _strict_positive_int(account_id, field=f"{where}account", maximum=2**63 - 1),
        _strict_positive_int(beans, field=f"{where}beans", maximum=settings.TRADES_MAX_BEANS),
    )


def _deduction_payload(trade: Trade) -> dict[str, int]:
    return {"trade_id": trade.pk, "account_id": trade.account_id, "beans": trade.beans}


def trade_place(
    *, account_id: int, beans: int, idempotency_key: str | None = None, client_id: int = 0
) -> tuple[Trade, bool]:
    """Record a trade and its deduction message, atomically, in one statement.

    Return ``(trade, created)``; ``created`` is False when ``idempotency_key`` was
    used before by ``client_id`` for the same trade, which is then returned unchanged.

    One round trip on the way that matters: the trade, its stream's seq and the outbox row
    are one statement (``outbox_enqueue_with_row``), which also checks that the account
    exists when the bean service's accounts share the trades' database. Only a refusal (an
    unknown account, a repeated Idempotency-Key) costs a second statement, to say which.
    """
    account_id, beans = _order_validated(account_id, beans)
    if idempotency_key is not None and not 0 < len(idempotency_key) <= IDEMPOTENCY_KEY_MAX_LENGTH:
        raise TradeInvalid(f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_MAX_LENGTH} characters")
    using = router.db_for_write(Trade) or "default"
    # Where the bean service's accounts share this database the insert checks the account itself.
    account_exists_sql = _account_exists_sql(using) if accounts_database() == using else None
    if account_exists_sql is None and not account_exists(account_id=account_id):
        raise AccountNotFound(f"account {account_id} does not exist")
    message_id, now = message_id_new(), timezone.now()
    inserted = outbox_enqueue_with_row(
        insert_sql=_TRADE_INSERT.format(account_exists=account_exists_sql or "TRUE"),
        params={
            "account": account_id,
            "beans": beans,
            "status": Trade.Status.PENDING,
            "key": idempotency_key,
            "client": client_id,
            "message_id": message_id,
            "now": now,
        },
        task_name=DEDUCT_TASK,
        queue=deduction_queue(account_id),
        stream=deduction_stream(account_id),
        payload={"account_id": account_id, "beans": beans},
        payload_columns={"trade_id": "id"},
        message_id=message_id,
        using=using,
    )
    if inserted is None:  # nothing written: say why
        if idempotency_key is not None:
            existing = (
                Trade.objects.using(using)
                .filter(client_id=client_id, idempotency_key=idempotency_key)
                .first()
            )
            if existing is not None:
                if (existing.account_id, existing.beans) != (account_id, beans):
                    raise IdempotencyConflict(
                        f"Idempotency-Key {idempotency_key!r} was used for trade {existing.pk} "
                        "with a different account or amount"
                    )
                return existing, False
        raise AccountNotFound(f"account {account_id} does not exist")
    trade = Trade(
        pk=inserted[0],
        account_id=account_id,
        beans=beans,
        idempotency_key=idempotency_key,
        client_id=client_id,
        deduction_message_id=message_id,
        created_at=now,
        updated_at=now,
    )
    trade._state.adding, trade._state.db = False, using
    logger.info("trade %d placed, deduction message %s", trade.pk, message_id)
    return trade, True


# The trade row of trade_place, if its account exists ({account_exists}) and the client has not
# used the Idempotency-Key before (then nothing is inserted, and the caller finds the first trade).
_TRADE_INSERT = (
    f"INSERT INTO {Trade._meta.db_table} (account_id, beans, status, rejection_reason, idempotency_key, "
    "client_id, deduction_message_id, created_at, updated_at) "
    "SELECT %(account)s::bigint, %(beans)s::bigint, %(status)s::text, '', %(key)s::text, %(client)s::bigint, "
    "%(message_id)s::uuid, %(now)s::timestamptz, %(now)s::timestamptz "
    "WHERE {account_exists} "
    "ON CONFLICT ON CONSTRAINT trade_client_idempotency_key_unique DO NOTHING RETURNING id"
)


@cache
def _account_exists_sql(using: str) -> str:
    """``EXISTS (...)``, true when the account ``%(account)s`` exists, for a statement on ``using``.

    Django writes it from the bean service's QuerySet of accounts. It is the same for every account,
    so it is compiled once per database: compiling it costs more CPU than the rest of a placement.
    """
    account = RawSQL("%(account)s::bigint", (), output_field=BigIntegerField())
    accounts = accounts_all().filter(pk=account).values("pk")
    sql, params = accounts.query.get_compiler(using=using).as_sql()
    if params:  # the statement's own parameters are named: no room for positional ones
        raise TypeError(f"the accounts' QuerySet has parameters of its own: {params!r}")
    return f"EXISTS ({sql})"


def trades_place_many(
    *,
    orders: Sequence[TradeOrder],
    idempotency_key: str | None = None,
    client_id: int = 0,
) -> tuple[list[Trade], bool]:
    """Record many trades and their deduction messages in one transaction: all of them or none.

    ``orders`` are 1 to ``TRADES_BATCH_MAX`` ``TradeOrder``. Each trade is exactly what
    ``trade_place`` would record: its own deduction message, message_id and place in its
    account's stream, so the consumer dedupes, orders and replays each on its own; an
    account's trades keep the order given.
    What batching saves is the producer's cost per trade: one transaction and a few
    set-based statements for the whole batch instead of several round trips per trade.

    ``idempotency_key`` names the batch: trade ``i`` is stored under ``"{key}/{i}"``, so a
    retry after an unknown outcome returns the batch placed first (``created`` False),
    and a reuse for different orders is an ``IdempotencyConflict``.
    """
    if not isinstance(orders, Sequence) or not 0 < len(orders) <= settings.TRADES_BATCH_MAX:
        raise TradeInvalid(f"trades must be a list of 1 to {settings.TRADES_BATCH_MAX} orders")
    validated = []
    for index, order in enumerate(orders):
        if not isinstance(order, TradeOrder):
            raise TradeInvalid(f"trades[{index}] must be a TradeOrder, got {type(order).__name__}")
        validated.append(_order_validated(order.account_id, order.beans, where=f"trades[{index}]."))
    keys: list[str | None] = [None] * len(validated)
    if idempotency_key is not None:
        longest = len(f"{idempotency_key}/{len(validated) - 1}")
        if not idempotency_key or longest > IDEMPOTENCY_KEY_MAX_LENGTH:
            raise TradeInvalid(
                f"Idempotency-Key of a batch of {len(validated)} must be 1 to "
                f"{IDEMPOTENCY_KEY_MAX_LENGTH - (longest - len(idempotency_key))} characters"
            )
        keys = [f"{idempotency_key}/{index}" for index in range(len(validated))]
    missing = accounts_missing(account_ids=(account_id for account_id, _ in validated))
    if missing:
        raise AccountNotFound(f"account(s) {', '.join(map(str, missing))} do not exist")
    with transaction.atomic():
        try:
            with transaction.atomic() if idempotency_key is not None else nullcontext():
                trades = Trade.objects.bulk_create(
                    Trade(
                        account_id=account_id,
                        beans=beans,
                        idempotency_key=key,
                        client_id=client_id,
                        deduction_message_id=message_id_new(),
                    )
                    for (account_id, beans), key in zip(validated, keys, strict=True)
                )
        except IntegrityError:
            if idempotency_key is None:
                raise
            return _batch_placed_before(client_id, idempotency_key, keys, validated), False
        by_queue: dict[str, list[tuple[str, dict[str, Any], uuid.UUID | None]]] = {}
        for trade in trades:
            by_queue.setdefault(deduction_queue(trade.account_id), []).append(
                (deduction_stream(trade.account_id), _deduction_payload(trade), trade.deduction_message_id)
            )
        # Queues, then streams within one, in sorted order: the lock order of every producer.
        for queue in sorted(by_queue):
            outbox_enqueue_many(task_name=DEDUCT_TASK, queue=queue, messages=by_queue[queue])
    logger.info("%d trades placed in one batch, trades %d to %d", len(trades), trades[0].pk, trades[-1].pk)
    return trades, True


def _batch_placed_before(
    client_id: int, key: str, keys: list[str | None], orders: list[tuple[int, int]]
) -> list[Trade]:
    """Return the trades a client's batch with this Idempotency-Key placed, or raise ``IdempotencyConflict``."""
    one_more = f"{key}/{len(keys)}"  # present if the first batch was longer than this one
    existing = {
        trade.idempotency_key: trade
        for trade in Trade.objects.filter(client_id=client_id, idempotency_key__in=[*keys, one_more])
    }
    placed = [existing.get(one) for one in keys]
    if one_more in existing or any(
        trade is None or (trade.account_id, trade.beans) != order
        for trade, order in zip(placed, orders, strict=True)
    ):
        raise IdempotencyConflict(f"Idempotency-Key {key!r} was used for a different batch of trades")
    return [trade for trade in placed if trade is not None]


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
    _trades_settle([(trade_id, outcome, balance_after)])
    return str(outcome)


def _rejection_reason(outcome: str) -> str:
    return "insufficient funds" if outcome == Trade.Status.REJECTED else ""


def trades_record_outcomes(messages: list[Message]) -> list[str]:
    """``trade_record_outcome`` for a batch: one lock and one update (which counts them) for all of its trades.

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
    _trades_settle(fields)
    return [outcome for _, outcome, _ in fields]


def _trades_settle(fields: list[tuple[int, str, int | None]]) -> None:
    """Settle pending trades (``(trade_id, outcome, balance_after)``, locked by the caller) and
    add them to ``TradeStatusCount``, in one statement: the count commits or rolls back with them.

    Only a pending trade is settled and counted, so an outcome seen before never counts twice.
    Statuses are added in order, so two sessions of one shard lock its rows in the same order.
    """
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            f"WITH settled AS (UPDATE {Trade._meta.db_table} AS t SET status = u.s, balance_after = u.b, "  # noqa: S608
            "rejection_reason = u.r, settled_at = %s, updated_at = %s "
            "FROM unnest(%s::bigint[], %s::text[], %s::bigint[], %s::text[]) AS u(i, s, b, r) "
            "WHERE t.id = u.i AND t.status = %s RETURNING t.status) "
            f"INSERT INTO {TradeStatusCount._meta.db_table} AS c (status, shard, count) "
            "SELECT status, pg_backend_pid() %% %s, count(*) FROM settled GROUP BY status ORDER BY status "
            "ON CONFLICT ON CONSTRAINT trade_status_count_status_shard_unique "
            "DO UPDATE SET count = c.count + EXCLUDED.count",
            [
                now,
                now,
                [trade_id for trade_id, _, _ in fields],
                [outcome for _, outcome, _ in fields],
                [balance_after for _, _, balance_after in fields],
                [_rejection_reason(outcome) for _, outcome, _ in fields],
                Trade.Status.PENDING,
                TRADE_STATUS_COUNT_SHARDS,
            ],
        )


def trade_status_counts_recount() -> dict[str, int]:
    """Set ``TradeStatusCount`` to the trades table's counts of settled trades; return them.

    The repair for trades settled around ``_trades_settle`` (by hand, by a bench, or by a
    worker still running the code of before the counter). Settling waits meanwhile: the
    counter's table is locked first, so no transaction settles between the count and the commit.
    """
    counters, trades = TradeStatusCount._meta.db_table, Trade._meta.db_table
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"LOCK TABLE {counters} IN EXCLUSIVE MODE")
        cursor.execute(f"DELETE FROM {counters}")  # noqa: S608
        cursor.execute(
            f"INSERT INTO {counters} (status, shard, count) "  # noqa: S608
            f"SELECT status, 0, count(*) FROM {trades} WHERE status <> %s GROUP BY status RETURNING status, count",
            [Trade.Status.PENDING],
        )
        counts = {str(status): int(count) for status, count in cursor.fetchall()}
    logger.info("trade status counters recounted: %s", counts)
    return counts
