"""HTTP API of the trade service: parse, call one service, shape the answer.

Mounted at ``/api/trades/`` and ``/api/accounts/`` by ``project.api.routes``; the schema of
every request and answer is in the OpenAPI document (``/api/openapi.json``).
"""

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from ninja import Field, Header, Path, Query, Router, Schema
from ninja.decorators import decorate_view
from pydantic import BeforeValidator, ConfigDict, StrictInt

from edge.http.parsing import Error, max_body_bytes
from edge.http.security import Scope, requires
from reliability import (
    ClockMovedBackwards,
    PipelineMode,
    WorkerIdUnavailable,
    non_critical,
    pipeline_mode_current,
)

from . import selectors, services
from .exceptions import AccountNotFound, IdempotencyConflict, TradeInvalid
from .models import Trade

MAX_BODY_BYTES = 4096
# Room for TRADES_BATCH_MAX orders at their longest (~60 bytes each), and no more.
MAX_BATCH_BODY_BYTES = 65536
BIGINT_MAX = 2**63 - 1

# A float from here on may not be the number the client wrote (IEEE doubles): refused, not rounded.
EXACT_FLOAT_MAX = 2**53


def _integral(value: Any) -> Any:
    """JSON has one kind of number: ``30.0`` is the integer 30, as JSON Schema says too."""
    if isinstance(value, float) and value.is_integer() and abs(value) < EXACT_FLOAT_MAX:
        return int(value)
    return value


# An integer, never a boolean or a string; an integral JSON number written with a fraction is one.
JsonInt = Annotated[StrictInt, BeforeValidator(_integral)]

router = Router(tags=["trades"])
accounts_router = Router(tags=["trades"])


class Order(Schema):
    """One trade to place: take ``beans`` from ``account``."""

    model_config = ConfigDict(extra="forbid")

    account: JsonInt = Field(gt=0, le=BIGINT_MAX, description="The account to deduct from.")
    beans: JsonInt = Field(gt=0, le=settings.TRADES_MAX_BEANS, description="How many beans.")


class Orders(Schema):
    """Trades to place in one transaction: all of them or none."""

    model_config = ConfigDict(extra="forbid")

    trades: list[Order] = Field(min_length=1, max_length=settings.TRADES_BATCH_MAX)


class TradeOut(Schema):
    id: int
    account: int
    beans: int
    status: Trade.Status
    rejection_reason: str | None = Field(description='"insufficient funds" when rejected')
    balance_after: int | None = Field(description="The account's balance once deducted")
    message_id: UUID = Field(description="The deduction message's id, the same in every log line")
    created_at: datetime
    settled_at: datetime | None


class Lag(Schema):
    outbox_oldest_pending_age_s: float
    consumer_lag_messages: float


class Pipeline(Schema):
    """How far behind the pipeline is: a degraded pipeline still takes trades, later."""

    degraded: bool
    lag: Lag


class TradePlaced(TradeOut):
    pipeline: Pipeline


class TradesPlaced(Schema):
    trades: list[TradeOut]
    pipeline: Pipeline


class TradesPage(Schema):
    """Which of an account's trades to list; an unknown parameter is refused, not ignored."""

    model_config = ConfigDict(extra="forbid")

    limit: int = Field(50, description="How many: 1 to 500 (a number outside is brought to the nearest).")


class AccountTrades(Schema):
    account: int
    trades: list[TradeOut]


def _idempotency_key_header(max_length: int) -> Any:
    """The Idempotency-Key header: 1 to ``max_length`` printable ASCII characters.

    ASCII as in the IETF draft "The Idempotency-Key HTTP Header Field" (a Structured Field
    String: %x20-7E); a batch's key leaves room for the ``/<index>`` each of its trades is
    stored under.
    """
    return Header(
        alias="Idempotency-Key",
        pattern=rf"^[\x20-\x7e]{{1,{max_length}}}$",
        description=(
            f"Names this request (1 to {max_length} printable ASCII characters): a retry with the same "
            "key from the same API key returns the first answer's trade(s) with 200 instead of "
            "placing again; the same key for other orders is a 409. Keys of different API keys "
            "never meet."
        ),
    )


BATCH_IDEMPOTENCY_KEY_MAX_LENGTH = services.IDEMPOTENCY_KEY_MAX_LENGTH - len(
    f"/{settings.TRADES_BATCH_MAX - 1}"
)
IdempotencyKey = Annotated[str | None, _idempotency_key_header(services.IDEMPOTENCY_KEY_MAX_LENGTH)]
BatchIdempotencyKey = Annotated[str | None, _idempotency_key_header(BATCH_IDEMPOTENCY_KEY_MAX_LENGTH)]

PLACEMENT_ANSWERS: dict[int, Any] = {
    400: Error,
    401: Error,
    403: Error,
    404: Error,
    409: Error,
    429: Error,
    503: Error,
}


def trade_json(trade: Trade) -> dict[str, Any]:
    return {
        "id": trade.pk,
        "account": trade.account_id,
        "beans": trade.beans,
        "status": trade.status,
        "rejection_reason": trade.rejection_reason or None,
        "balance_after": trade.balance_after,
        "message_id": trade.deduction_message_id,
        "created_at": trade.created_at,
        "settled_at": trade.settled_at,
    }


# Why a placement wrote nothing, and the status that says so.
_REFUSAL_STATUS: dict[type[Exception], int] = {
    TradeInvalid: 400,
    AccountNotFound: 404,
    IdempotencyConflict: 409,
    WorkerIdUnavailable: 503,
    ClockMovedBackwards: 503,
}
_PLACEMENT_REFUSALS = tuple(_REFUSAL_STATUS)


def _placement_refused(exc: Exception, response: HttpResponse) -> tuple[int, dict[str, str]]:
    """The answer to a placement that wrote nothing: which 4xx or 503, and why."""
    status = next(code for kind, code in _REFUSAL_STATUS.items() if isinstance(exc, kind))
    if status != 503:
        return status, {"error": str(exc)}
    response["Retry-After"] = "5"
    return 503, {"error": f"cannot assign a message id right now, nothing was written: {exc}"}


def _placed(body: dict[str, Any], response: HttpResponse, *, created: bool) -> tuple[int, dict[str, Any]]:
    """The answer to a placement: 201 (or 200 for a repeated Idempotency-Key), with the pipeline's lag."""
    mode = pipeline_mode_current()
    response["X-Pipeline-Degraded"] = "1" if mode.degraded else "0"
    return 201 if created else 200, {**body, "pipeline": {"degraded": mode.degraded, "lag": _lag_json(mode)}}


def _lag_json(mode: PipelineMode) -> dict[str, float]:
    return {
        "outbox_oldest_pending_age_s": mode.outbox_oldest_pending_age_s,
        "consumer_lag_messages": mode.consumer_lag_messages,
    }


@router.post(
    "/",
    auth=requires(Scope.TRADES_WRITE),
    response={200: TradePlaced, 201: TradePlaced, **PLACEMENT_ANSWERS},
    url_name="trade-create",
    summary="Place a trade",
)
@decorate_view(max_body_bytes(MAX_BODY_BYTES))
def trade_create(
    request: HttpRequest, response: HttpResponse, order: Order, idempotency_key: IdempotencyKey = None
) -> tuple[int, dict[str, Any]]:
    """Record a trade and its deduction message in one transaction; the beans are deducted
    once, asynchronously: the trade is ``pending`` until the bean service's outcome arrives."""
    try:
        trade, created = services.trade_place(
            account_id=order.account,
            beans=order.beans,
            idempotency_key=idempotency_key,
            client_id=request.auth.pk,  # type: ignore[attr-defined]
        )
    except _PLACEMENT_REFUSALS as exc:
        return _placement_refused(exc, response)
    return _placed(trade_json(trade), response, created=created)


@router.post(
    "/batch/",
    auth=requires(Scope.TRADES_WRITE),
    response={200: TradesPlaced, 201: TradesPlaced, **PLACEMENT_ANSWERS},
    url_name="trades-create-batch",
    summary="Place many trades at once",
)
@decorate_view(max_body_bytes(MAX_BATCH_BODY_BYTES))
def trades_create_batch(
    request: HttpRequest, response: HttpResponse, orders: Orders, idempotency_key: BatchIdempotencyKey = None
) -> tuple[int, dict[str, Any]]:
    """Place many trades in one transaction: all of them or none. Each is exactly the trade
    ``POST /api/trades/`` would place; a batch's Idempotency-Key names the whole batch."""
    try:
        trades, created = services.trades_place_many(
            orders=[
                services.TradeOrder(account_id=order.account, beans=order.beans) for order in orders.trades
            ],
            idempotency_key=idempotency_key,
            client_id=request.auth.pk,  # type: ignore[attr-defined]
        )
    except _PLACEMENT_REFUSALS as exc:
        return _placement_refused(exc, response)
    return _placed({"trades": [trade_json(trade) for trade in trades]}, response, created=created)


@router.get(
    "/{int:trade_id}/",
    auth=requires(Scope.TRADES_READ),
    response={200: TradeOut, 401: Error, 403: Error, 404: Error, 429: Error},
    url_name="trade-detail",
    summary="A trade and its status",
)
def trade_detail(request: HttpRequest, trade_id: Annotated[int, Path(ge=0)]) -> tuple[int, dict[str, Any]]:
    try:
        trade = selectors.trade_get(trade_id=trade_id)
    except Trade.DoesNotExist:
        return 404, {"error": f"trade {trade_id} does not exist"}
    return 200, trade_json(trade)


@accounts_router.get(
    "/{int:account_id}/trades/",
    auth=requires(Scope.TRADES_READ),
    response={200: AccountTrades, 400: Error, 401: Error, 403: Error, 404: Error, 429: Error, 503: Error},
    url_name="account-trades",
    summary="An account's most recent trades, newest first",
    description="Refused with 503 and Retry-After while the pipeline is degraded (it is shed first).",
)
# A history listing: shed while the pipeline catches up (the 503 is an HttpResponse, which ninja
# passes through).
@non_critical  # type: ignore[arg-type]
def account_trades(
    request: HttpRequest,
    account_id: Annotated[int, Path(ge=0)],
    limit: Annotated[
        int, Query(description="How many: 1 to 500 (a number outside is brought to the nearest).")
    ] = 50,
) -> tuple[int, dict[str, Any]]:
    trades = selectors.trades_of_account(account_id=account_id, limit=min(max(limit, 1), 500))
    return 200, {"account": account_id, "trades": [trade_json(trade) for trade in trades]}
