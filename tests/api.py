"""API keys for tests that call the HTTP API."""

import itertools

from django.test import Client

from edge.models import ApiScope
from edge.services import api_key_create

ALL_SCOPES = tuple(ApiScope.values)
# Far above what a test sends: the rate limit has tests of its own.
UNLIMITED = 10**9


_names = itertools.count()


def api_key_new(name: str = "test", *scopes: str, rate_limit_per_s: int = UNLIMITED) -> str:
    """A new key with ``scopes`` (all of them by default); its name is made unique."""
    _, key = api_key_create(
        name=f"{name}-{next(_names)}", scopes=scopes or ALL_SCOPES, rate_limit_per_s=rate_limit_per_s
    )
    return key


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def client_authenticate(client: Client, key: str | None = None) -> str:
    """Make every request of ``client`` carry an API key (a new one with every scope by default)."""
    key = key or api_key_new()
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {key}"
    return key
