"""API keys: create and revoke them (the write side of ``ApiKey``)."""

import logging
import secrets
from collections.abc import Iterable

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from .exceptions import ApiKeyError
from .models import ApiKey
from .selectors import KEY_PREFIX, api_key_digest, api_keys_authenticated_forget

logger = logging.getLogger(__name__)


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
                digest=api_key_digest(key),
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
    api_keys_authenticated_forget()  # this process refuses it at once; the others within API_KEY_CACHE_S
    logger.info("API key %s revoked (bk_%s_…)", api_key.name, api_key.prefix)
    return api_key
