"""API keys: create, revoke, list, and authenticate one (services and selectors of ``ApiKey``)."""

import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Iterable

from django.conf import settings
from django.db import IntegrityError, connections, router, transaction
from django.db.models import Q
from django.utils import timezone

from .models import ApiKey

logger = logging.getLogger(__name__)

KEY_PREFIX = "bk_"
_PREFIX_CHARACTERS = frozenset("0123456789abcdef")  # a prefix is secrets.token_hex(6)
# Compared against when no key has the presented prefix, so that an unknown key takes as long
# to refuse as a wrong one.
_NO_DIGEST = hashlib.sha256(b"no such key").hexdigest()
# Keys that authenticated, by digest, with when they were read: (monotonic time, row). Only keys
# we issued get in, so nobody can fill it by sending made-up keys; past its bound it starts over.
_authenticated: dict[str, tuple[float, ApiKey]] = {}
_AUTHENTICATED_MAX = 1024


class ApiKeyError(Exception):
    """A key cannot be created or revoked as asked; the message says why."""


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _scopes_validated(scopes: Iterable[str]) -> list[str]:
    wanted = sorted({scope.strip() for scope in scopes if scope.strip()})
    unknown = sorted(set(wanted) - set(ApiKey.Scope.values))
    if unknown or not wanted:
        problem = f"unknown scope(s): {', '.join(unknown)}" if unknown else "at least one scope is needed"
        raise ApiKeyError(f"{problem} (the scopes: {', '.join(ApiKey.Scope.values)})")
    return wanted


def api_key_create(*, name: str, scopes: Iterable[str], rate_limit_per_s: int = 0) -> tuple[ApiKey, str]:
    """Create a key; return it and the key itself, which is not stored and cannot be shown again."""
    name = name.strip()
    if not name or len(name) > 100:
        raise ApiKeyError("a key's name must be 1 to 100 characters")
    if rate_limit_per_s < 0:
        raise ApiKeyError("the rate limit must be 0 (the project's default) or a positive number")
    scope_list = _scopes_validated(scopes)
    prefix = secrets.token_hex(6)
    key = f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    try:
        with transaction.atomic():
            api_key = ApiKey.objects.create(
                name=name,
                prefix=prefix,
                digest=_digest(key),
                scopes=scope_list,
                rate_limit_per_s=rate_limit_per_s,
            )
    except IntegrityError as exc:
        raise ApiKeyError(
            f"a live key is already named {name!r}: revoke it first, or pick another name"
        ) from exc
    logger.info("API key %s created (bk_%s_…, scopes %s)", name, prefix, ",".join(scope_list))
    return api_key, key


def api_key_revoke(*, name_or_prefix: str) -> ApiKey:
    """Revoke the live key with this name (or prefix); its requests are refused from now on."""
    with transaction.atomic():
        live = ApiKey.objects.select_for_update().filter(
            Q(name=name_or_prefix) | Q(prefix=name_or_prefix), revoked_at__isnull=True
        )
        found = list(live[:2])
        if not found:
            raise ApiKeyError(f"no live API key is named {name_or_prefix!r} or has that prefix")
        if len(found) > 1:
            raise ApiKeyError(f"{name_or_prefix!r} is one key's name and another's prefix: give the other")
        api_key = found[0]
        api_key.revoked_at = timezone.now()
        api_key.save(update_fields=["revoked_at"])
    _authenticated.clear()  # this process refuses it at once; the others within API_KEY_CACHE_S
    logger.info("API key %s revoked (bk_%s_…)", api_key.name, api_key.prefix)
    return api_key


def api_keys_list() -> list[ApiKey]:
    return list(ApiKey.objects.order_by("id"))


def api_key_authenticate(key: str) -> ApiKey | None:
    """Return the key's row if ``key`` is a key we issued (revoked or not), else None.

    The digest comparison takes the same time whether the key is unknown, wrong or right.
    A key that authenticated is remembered for ``API_KEY_CACHE_S`` (the lookup was a sixth of
    a request's CPU), so a key revoked elsewhere is refused by this process within that time.
    """
    digest = _digest(key)
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
