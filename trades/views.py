"""HTTP interface of the trade service: parse, call one service, shape the answer."""

import json
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

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
TRADE_FIELDS = {"account", "beans"}


def _error(status: int, message: str) -> JsonResponse:
    return JsonResponse({"error": message}, status=status)


def _allow(*methods: str) -> Callable[[Callable[..., HttpResponse]], Callable[..., HttpResponse]]:
    """Like ``require_http_methods``, but the 405 is JSON with an error, as every other refusal."""

    def decorate(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @wraps(view)
        def allowed_only(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if request.method not in methods:
                response = _error(
                    405, f"method {request.method} not allowed here; use {' or '.join(methods)}"
                )
                response["Allow"] = ", ".join(methods)
                return response
            return view(request, *args, **kwargs)

        return allowed_only

    return decorate


def trade_json(trade: Trade) -> dict[str, Any]:
    return {
        "id": trade.pk,
        "account": trade.account_id,
        "beans": trade.beans,
        "status": trade.status,
        "rejection_reason": trade.rejection_reason or None,
        "balance_after": trade.balance_after,
        "message_id": str(trade.deduction_message_id),
        "created_at": trade.created_at.isoformat(),
        "settled_at": trade.settled_at.isoformat() if trade.settled_at else None,
    }


def _parse_json_object(
    request: HttpRequest, *, max_bytes: int, example: str, fields: set[str]
) -> dict[str, Any]:
    """Return the request's JSON object with exactly ``fields``, or raise ``TradeInvalid`` saying why."""
    try:
        too_large = len(request.body) > max_bytes
    except RequestDataTooBig:  # beyond DATA_UPLOAD_MAX_MEMORY_SIZE: Django does not even read it
        too_large = True
    if too_large:
        raise TradeInvalid(f"request body is larger than {max_bytes} bytes")
    if request.content_type != "application/json":
        raise TradeInvalid("Content-Type must be application/json")
    try:
        body = json.loads(request.body.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # bad UTF-8, bad JSON, absurd nesting
        raise TradeInvalid(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise TradeInvalid(f"request body must be a JSON object like {example}")
    missing, unknown = fields - body.keys(), body.keys() - fields
    if missing:
        raise TradeInvalid(f"missing field(s): {', '.join(sorted(missing))}")
    if unknown:
        raise TradeInvalid(f"unknown field(s): {', '.join(sorted(unknown))}")
    return body


def _parse_trade_body(request: HttpRequest) -> dict[str, Any]:
    return _parse_json_object(
        request, max_bytes=MAX_BODY_BYTES, example='{"account": 1, "beans": 100}', fields=TRADE_FIELDS
    )


def _idempotency_key(request: HttpRequest) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is not None and not key.isprintable():  # control characters, NUL: not a key, and not storable
        raise TradeInvalid("Idempotency-Key must be printable text, without control characters")
    return key


# Why a placement wrote nothing, and the status that says so.
_REFUSAL_STATUS: dict[type[Exception], int] = {
    TradeInvalid: 400,
    AccountNotFound: 404,
    IdempotencyConflict: 409,
    WorkerIdUnavailable: 503,
    ClockMovedBackwards: 503,
}
_PLACEMENT_REFUSALS = tuple(_REFUSAL_STATUS)


def _placement_refused(exc: Exception) -> JsonResponse:
    """The answer to a placement that wrote nothing: which 4xx or 503, and why."""
    status = next(code for kind, code in _REFUSAL_STATUS.items() if isinstance(exc, kind))
    if status != 503:
        return _error(status, str(exc))
    response = _error(503, f"cannot assign a message id right now, nothing was written: {exc}")
    response["Retry-After"] = "5"
    return response


def _placed(body: dict[str, Any], *, created: bool) -> JsonResponse:
    """The answer to a placement: 201 (or 200 for a repeated Idempotency-Key), with the pipeline's lag."""
    mode = pipeline_mode_current()
    response = JsonResponse(
        {**body, "pipeline": {"degraded": mode.degraded, "lag": _lag_json(mode)}},
        status=201 if created else 200,
    )
    response["X-Pipeline-Degraded"] = "1" if mode.degraded else "0"
    return response


@csrf_exempt  # a JSON API without cookie authentication: CSRF does not apply
@_allow("POST")
def trade_create(request: HttpRequest) -> JsonResponse:
    try:
        body = _parse_trade_body(request)
        trade, created = services.trade_place(
            account_id=body["account"],
            beans=body["beans"],
            idempotency_key=_idempotency_key(request),
        )
    except _PLACEMENT_REFUSALS as exc:
        return _placement_refused(exc)
    return _placed(trade_json(trade), created=created)


@csrf_exempt
@_allow("POST")
def trades_create_batch(request: HttpRequest) -> JsonResponse:
    """Place many trades in one transaction: all of them or none (``trades_place_many``)."""
    try:
        body = _parse_json_object(
            request,
            max_bytes=MAX_BATCH_BODY_BYTES,
            example='{"trades": [{"account": 1, "beans": 100}]}',
            fields={"trades"},
        )
        trades, created = services.trades_place_many(
            orders=body["trades"], idempotency_key=_idempotency_key(request)
        )
    except _PLACEMENT_REFUSALS as exc:
        return _placement_refused(exc)
    return _placed({"trades": [trade_json(trade) for trade in trades]}, created=created)


def _lag_json(mode: PipelineMode) -> dict[str, float]:
    return {
        "outbox_oldest_pending_age_s": mode.outbox_oldest_pending_age_s,
        "consumer_lag_messages": mode.consumer_lag_messages,
    }


@_allow("GET")
@non_critical  # a history listing: shed while the pipeline catches up
def account_trades(request: HttpRequest, account_id: int) -> JsonResponse:
    try:
        limit = min(max(int(request.GET.get("limit", "50")), 1), 500)
    except ValueError:
        return _error(400, "limit must be an integer from 1 to 500")
    trades = selectors.trades_of_account(account_id=account_id, limit=limit)
    return JsonResponse({"account": account_id, "trades": [trade_json(trade) for trade in trades]})


@_allow("GET")
def trade_detail(request: HttpRequest, trade_id: int) -> JsonResponse:
    try:
        trade = selectors.trade_get(trade_id=trade_id)
    except Trade.DoesNotExist:
        return _error(404, f"trade {trade_id} does not exist")
    return JsonResponse(trade_json(trade))
