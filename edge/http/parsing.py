"""Reading a request body, and answering every refusal the same way: ``{"error": "..."}``.

Every refusal of the API is a JSON object whose ``error`` says what is wrong, with the status
that says why: 400 (the request is malformed), 401, 403, 404, 405, 409, 429, 503.
"""

import functools
import json
import logging
from collections.abc import Callable
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.db import InterfaceError, OperationalError, connections
from django.http import HttpRequest, HttpResponse, JsonResponse
from ninja import NinjaAPI, Schema
from ninja.errors import AuthenticationError, HttpError, Throttled, ValidationError
from ninja.parser import Parser

logger = logging.getLogger(__name__)

# A body larger than this is refused before it is parsed, unless the operation sets its own.
DEFAULT_MAX_BODY_BYTES = 4096


class Error(Schema):
    """A refused request: nothing was written."""

    error: str


class BodyRefused(Exception):
    """The body cannot be read as a JSON document; the message says why."""


def error_response(status: int, message: str, **headers: str) -> JsonResponse:
    response = JsonResponse({"error": message}, status=status, content_type="application/json; charset=utf-8")
    for name, value in headers.items():
        response[name] = value
    return response


def max_body_bytes(limit: int) -> Callable[[Callable[..., HttpResponse]], Callable[..., HttpResponse]]:
    """Declare an operation's body limit (``decorate_view``); ``JsonBodyParser`` enforces it."""

    def decorate(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @functools.wraps(view)
        def limited(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            request.max_body_bytes = limit  # type: ignore[attr-defined]
            return view(request, *args, **kwargs)

        return limited

    return decorate


class JsonBodyParser(Parser):
    """``application/json`` only, within the operation's size limit, valid UTF-8 and JSON."""

    def parse_body(self, request: HttpRequest) -> Any:
        limit = getattr(request, "max_body_bytes", DEFAULT_MAX_BODY_BYTES)
        if len(request.body) > limit:
            raise BodyRefused(f"request body is larger than {limit} bytes")
        if request.content_type != "application/json":
            raise BodyRefused("Content-Type must be application/json")
        try:
            return json.loads(request.body.decode("utf-8"))
        except (ValueError, RecursionError) as exc:  # bad UTF-8, bad JSON, absurd nesting
            raise BodyRefused(f"request body is not valid JSON: {exc}") from exc


def _location(loc: tuple[Any, ...]) -> str:
    """``("body", "payload", "trades", 1, "beans")`` -> ``trades[1].beans``."""
    source, *path = loc
    if source == "body" and path:
        path = path[1:]  # the operation's parameter name, not part of the document
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text or ("request body" if source == "body" else str(source))


def validation_message(errors: list[dict[str, Any]]) -> str:
    """Pydantic's errors as one sentence a client can act on."""
    return "; ".join(f"{_location(tuple(error['loc']))}: {error['msg']}" for error in errors[:10])


def error_handlers_install(api: NinjaAPI) -> None:
    """Answer every refusal ninja produces with ``{"error": ...}`` instead of its ``detail``."""

    def on_http_error(request: HttpRequest, exc: Any) -> HttpResponse:
        # ninja wraps a parser's exception in "Cannot parse request body": say what it was.
        cause = exc.__cause__
        message = str(cause) if isinstance(cause, BodyRefused) else str(exc)
        if isinstance(exc, AuthenticationError):
            # Missing, malformed, unknown, wrong and revoked keys all look alike from outside.
            return error_response(
                401,
                "a valid API key is required: send Authorization: Bearer <key>",
                **{"WWW-Authenticate": 'Bearer realm="api"'},
            )
        if isinstance(exc, Throttled):
            message = "too many requests for this API key: slow down and retry after Retry-After seconds"
        return error_response(exc.status_code, message)

    def on_validation_error(request: HttpRequest, exc: Any) -> HttpResponse:
        return error_response(400, validation_message(exc.errors))

    def on_body_too_big(request: HttpRequest, exc: Any) -> HttpResponse:
        # Beyond DATA_UPLOAD_MAX_MEMORY_SIZE Django does not even read the body.
        return error_response(400, "request body is too large")

    def on_database_unavailable(request: HttpRequest, exc: Any) -> HttpResponse:
        # The database went away (a failover, a partition). Django closes the broken connection
        # when the request ends, and the next one finds the primary again (a multi-host
        # DATABASE_URL). What the client may assume depends on whether anything reached it.
        logger.warning("database unavailable during %s %s: %s", request.method, request.path, exc)
        if database_outcome_unknown():
            return error_response(
                500,
                "the database connection was lost during the request: it may or may not have taken "
                "effect; repeat it with the same Idempotency-Key",
            )
        return error_response(
            503,
            "the database is unavailable right now, nothing was written: retry after Retry-After seconds",
            **{"Retry-After": "1"},
        )

    api.add_exception_handler(HttpError, on_http_error)
    api.add_exception_handler(ValidationError, on_validation_error)
    api.add_exception_handler(RequestDataTooBig, on_body_too_big)
    api.add_exception_handler(OperationalError, on_database_unavailable)
    api.add_exception_handler(InterfaceError, on_database_unavailable)


def database_outcome_unknown() -> bool:
    """Whether a statement of this request may have reached a database whose connection then failed.

    A connection that could not be opened (Django leaves ``connection`` unset) sent nothing, so
    the API's 503 ("nothing was written") holds; one that failed once open may have committed.
    """
    return any(
        wrapper.connection is not None and wrapper.errors_occurred
        for wrapper in connections.all(initialized_only=True)
    )


class ApiRefusalsAsJson:
    """Middleware: an API path's 404 or 405 from Django or ninja is JSON with an ``error`` too.

    A path no route matches (``/api/trades/abc/``) is Django's HTML 404, and a method no
    operation takes is ninja's plain ``HttpResponseNotAllowed``; a client of the API gets the
    same ``{"error": ...}`` as for every other refusal.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if (
            response.status_code in (404, 405)
            and request.path.startswith("/api/")
            and not response.get("Content-Type", "").startswith("application/json")
        ):
            if response.status_code == 404:
                return error_response(404, f"no such resource: {request.path}")
            allowed = response.get("Allow", "")
            refused = error_response(
                405, f"method {request.method} not allowed here; use {' or '.join(allowed.split(', '))}"
            )
            refused["Allow"] = allowed
            return refused
        return response
