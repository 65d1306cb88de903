"""The HTTP API: the services' routers behind API keys, a rate limit and one shape of refusal.

Served at ``/api/``; the OpenAPI 3 document at ``/api/openapi.json`` (committed as
``project/api/openapi.json``: ``make schema`` writes it, ``make check`` fails when it is stale),
interactive documentation at ``/api/docs``.
"""

from ninja import NinjaAPI

import reliability
from beans.api import router as accounts_router
from edge.http.parsing import JsonBodyParser, error_handlers_install
from edge.http.security import ApiKeyRateLimit
from trades.api import accounts_router as account_trades_router
from trades.api import router as trades_router

api = NinjaAPI(
    title="Beans trade API",
    version="1",
    description=(
        "Place trades whose beans are deducted exactly once. Authenticate with an API key: "
        "`Authorization: Bearer <key>` (`manage.py api_keys create NAME --scopes trades:write`). "
        "Every refusal is a JSON object whose `error` says what is wrong; nothing was written. "
        f"Pipeline library: django-exactly-once {reliability.__version__}."
    ),
    parser=JsonBodyParser(),
    throttle=[ApiKeyRateLimit()],
    urls_namespace="api",
    docs_url="/docs",
    openapi_url="/openapi.json",
)
error_handlers_install(api)
api.add_router("/trades/", trades_router)
api.add_router("/accounts/", accounts_router)
api.add_router("/accounts/", account_trades_router)
