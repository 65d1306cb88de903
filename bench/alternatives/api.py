"""The alternatives' HTTP endpoints, on the view layer of ``POST /api/trades/``.

The same django-ninja setup as ``project.api.routes`` (its JSON body parser, its per-key rate
limit, its refusals), the same request schema and body limit as ``trades.api`` (``Order``,
``MAX_BODY_BYTES``: imported, not copied) and the same API-key authentication
(``requires(Scope.TRADES_WRITE)``). One trade per request, answered 201 with the trade.
Mounted at ``/bench/`` by ``bench.urls`` (``bench.settings`` only).
"""

from datetime import datetime
from typing import Any

from django.http import HttpRequest
from ninja import NinjaAPI, Router, Schema
from ninja.decorators import decorate_view

from edge.http.parsing import Error, JsonBodyParser, error_handlers_install, max_body_bytes
from edge.http.security import ApiKeyRateLimit, Scope, requires
from trades.api import MAX_BODY_BYTES, Order

from . import produce
from .models import Trade

router = Router(tags=["bench"])

REFUSALS: dict[int, Any] = {400: Error, 401: Error, 403: Error, 404: Error, 429: Error}


class TradeOut(Schema):
    id: int
    account: int
    beans: int
    status: Trade.Status
    created_at: datetime


class Accepted(Schema):
    account: int
    beans: int


def trade_json(trade: Trade) -> dict[str, Any]:
    return {
        "id": trade.pk,
        "account": trade.account_id,
        "beans": trade.beans,
        "status": trade.status,
        "created_at": trade.created_at,
    }


@router.post(
    "/best-practice-celery/trades/",
    auth=requires(Scope.TRADES_WRITE),
    response={201: TradeOut, **REFUSALS},
    url_name="bench-best-practice-celery",
    summary="Place a trade: commit, then on_commit(delay)",
)
@decorate_view(max_body_bytes(MAX_BODY_BYTES))
def trade_create_best_practice_celery(request: HttpRequest, order: Order) -> tuple[int, dict[str, Any]]:
    return _placed(produce.trade_place_best_practice_celery, request, order)


@router.post(
    "/django-celery-outbox/trades/",
    auth=requires(Scope.TRADES_WRITE),
    response={201: TradeOut, **REFUSALS},
    url_name="bench-django-celery-outbox",
    summary="Place a trade: the trade and its outbox row in one transaction",
)
@decorate_view(max_body_bytes(MAX_BODY_BYTES))
def trade_create_django_celery_outbox(request: HttpRequest, order: Order) -> tuple[int, dict[str, Any]]:
    return _placed(produce.trade_place_django_celery_outbox, request, order)


def _placed(place: Any, request: HttpRequest, order: Order) -> tuple[int, dict[str, Any]]:
    """Place ``order`` with one alternative's service; 201 with the trade, or 404."""
    try:
        trade = place(account_id=order.account, beans=order.beans, client_id=request.auth.pk)  # type: ignore[attr-defined]
    except produce.AccountNotFound as exc:
        return 404, {"error": str(exc)}
    return 201, trade_json(trade)


@router.post(
    "/noop/trades/",
    response={201: Accepted, 400: Error},
    url_name="bench-noop",
    summary="Parse a trade and answer 201: the web tier's ceiling (no authentication, no database)",
)
@decorate_view(max_body_bytes(MAX_BODY_BYTES))
def trade_create_noop(request: HttpRequest, order: Order) -> tuple[int, dict[str, Any]]:
    return 201, {"account": order.account, "beans": order.beans}


api = NinjaAPI(
    title="Bench: the alternatives",
    version="1",
    parser=JsonBodyParser(),
    throttle=[ApiKeyRateLimit()],
    urls_namespace="bench",
    docs_url=None,
    openapi_url=None,
)
error_handlers_install(api)
api.add_router("/", router)
