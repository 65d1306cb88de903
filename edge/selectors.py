"""API keys: list them, and authenticate one (the read side of ``ApiKey``)."""

import hashlib
import hmac
import time

from django.conf import settings
from django.db import connections, router

from .models import ApiKey

KEY_PREFIX = "bk_"
_PREFIX_CHARACTERS = frozenset("0123456789abcdef")  # a prefix is secrets.token_hex(6)
# Compared against when no key has the presented prefix, so that an unknown key takes as long
# to refuse as a wrong one.
_NO_DIGEST = hashlib.sha256(b"no such key").hexdigest()
# Keys that authenticated, by digest, with when they were read: (monotonic time, row). Only keys
# we issued get in, so nobody can fill it by sending made-up keys; past its bound it starts over.
_authenticated: dict[str, tuple[float, ApiKey]] = {}
_AUTHENTICATED_MAX = 1024


def api_key_digest(key: str) -> str:
    """The SHA-256 of a whole key, hex: all that is stored of it."""
    return hashlib.sha256(key.encode()).hexdigest()


def api_keys_list() -> list[ApiKey]:
    return list(ApiKey.objects.order_by("id"))


def api_key_authenticate(key: str) -> ApiKey | None:
    """Return the key's row if ``key`` is a key we issued (revoked or not), else None.

    The digest comparison takes the same time whether the key is unknown, wrong or right.
    A key that authenticated is remembered for ``API_KEY_CACHE_S`` (the lookup was a sixth of
    a request's CPU), so a key revoked elsewhere is refused by this process within that time.
    """
    digest = api_key_digest(key)
    ttl = settings.API_KEY_CACHE_S
    read_at, api_key = _authenticated.get(digest, (0.0, None)) if ttl > 0 else (0.0, None)
    looked_up = api_key is None or time.monotonic() - read_at >= ttl
    if looked_up:
        prefix = key[len(KEY_PREFIX) :].split("_", 1)[0] if key.startswith(KEY_PREFIX) else ""
        # Only a prefix we could have issued is looked up: anything else (a NUL, which PostgreSQL
        # refuses in a query) is a malformed key, refused like any other.
        issuable = len(prefix) == 12 and _PREFIX_CHARACTERS.issuperset(prefix)
        api_key = _api_key_by_prefix(prefix) if issuable else None
    if not hmac.compare_digest(digest, api_key.digest if api_key else _NO_DIGEST) or api_key is None:
        return None
    if ttl > 0 and looked_up:
        if len(_authenticated) >= _AUTHENTICATED_MAX:
            _authenticated.clear()
        _authenticated[digest] = (time.monotonic(), api_key)
    return api_key


def api_keys_authenticated_forget() -> None:
    """Forget the keys this process authenticated: the next request of each reads its row again."""
    _authenticated.clear()


_COLUMNS = [field.attname for field in ApiKey._meta.concrete_fields]
# Every request runs it: one indexed lookup, without the ORM's query building (a third of a
# request's CPU when it went through filter().first()).
_BY_PREFIX = f"SELECT {', '.join(_COLUMNS)} FROM {ApiKey._meta.db_table} WHERE prefix = %s"  # noqa: S608


def _api_key_by_prefix(prefix: str) -> ApiKey | None:
    using = router.db_for_read(ApiKey) or "default"
    with connections[using].cursor() as cursor:
        cursor.execute(_BY_PREFIX, [prefix])
        row = cursor.fetchone()
    return None if row is None else ApiKey.from_db(using, _COLUMNS, row)
