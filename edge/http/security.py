"""Who may call the API, and how often: API keys with scopes, and a per-key rate limit.

``Authorization: Bearer <key>``. A missing, malformed, unknown, wrong or revoked key is a 401;
a live key without the operation's scope is a 403. Nothing here logs a key: the Authorization
header is read and compared, never formatted into a message.
"""

import logging
import threading
import time

import redis
from django.conf import settings
from django.http import HttpRequest
from ninja.errors import AuthorizationError
from ninja.security import HttpBearer
from ninja.throttling import BaseThrottle
from redis.backoff import NoBackoff
from redis.retry import Retry

from edge.models import ApiKey
from edge.models import ApiScope as Scope
from edge.selectors import api_key_authenticate

logger = logging.getLogger(__name__)


class ApiKeyAuth(HttpBearer):
    """``Authorization: Bearer <key>`` for a live key that holds ``scope``."""

    def __init__(self, scope: str) -> None:
        super().__init__()
        self.scope = scope

    def __call__(self, request: HttpRequest) -> ApiKey | None:
        # HttpBearer.__call__ logs the whole header under DEBUG when the scheme is not Bearer.
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return None
        return self.authenticate(request, key.strip())

    def authenticate(self, request: HttpRequest, token: str) -> ApiKey | None:
        api_key = api_key_authenticate(token)
        if api_key is None or api_key.revoked_at is not None:
            return None
        if self.scope not in api_key.scopes:
            raise AuthorizationError(message=f"this API key lacks the scope {self.scope}")
        return api_key


def requires(scope: Scope) -> ApiKeyAuth:
    """The authentication of an operation that needs ``scope``."""
    return ApiKeyAuth(scope.value)


class ApiKeyRateLimit(BaseThrottle):
    """At most ``rate_limit_per_s`` requests a second per key (``API_RATE_LIMIT_PER_S`` by default).

    A counter per key and second in Redis (one INCR and EXPIRE, pipelined), shared by every
    web process. A limit protects the service; it is not a guarantee: while Redis cannot be
    reached requests are let through (fail open) and a warning is logged once a minute.
    """

    def __init__(self) -> None:
        self._clients: dict[str, redis.Redis] = {}
        self._clients_lock = threading.Lock()
        self._local = threading.local()
        self._warned_at = 0.0

    @property
    def client(self) -> redis.Redis:
        """One client (and connection pool) per URL for the process's lifetime, shared by its threads.

        Made under a lock: a second client made by a racing thread would be dropped, and a
        dropped client closes its pool under whoever still uses it.
        """
        url = settings.API_RATE_LIMIT_REDIS_URL
        client = self._clients.get(url)
        if client is None:
            with self._clients_lock:
                client = self._clients.get(url)
                if client is None:
                    client = self._clients[url] = redis.Redis.from_url(
                        url,
                        socket_connect_timeout=settings.API_RATE_LIMIT_REDIS_TIMEOUT_S,
                        socket_timeout=settings.API_RATE_LIMIT_REDIS_TIMEOUT_S,
                        # No retries: a silent Redis costs a request one timeout, not several.
                        retry=Retry(NoBackoff(), 0),
                    )
        return client

    def allow_request(self, request: HttpRequest) -> bool:
        api_key = getattr(request, "auth", None)
        if not isinstance(api_key, ApiKey):
            return True
        limit = api_key.rate_limit_per_s or settings.API_RATE_LIMIT_PER_S
        now = time.time()
        counter = f"api-rate:{api_key.prefix}:{int(now)}"
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.incr(counter)
            pipe.expire(counter, 2)
            count = pipe.execute()[0]
        except Exception as exc:  # noqa: BLE001 - whatever Redis or its client do, the request is served
            if now - self._warned_at > 60:
                self._warned_at = now
                logger.warning("API rate limit not enforced, Redis unreachable: %s", exc)
            return True
        self._local.wait = 1 - (now % 1)  # the rest of this second
        return int(count) <= limit

    def wait(self) -> float | None:
        return getattr(self._local, "wait", 1.0)
