"""System checks: the rules that tie the ``RELIABILITY_*`` settings together (``manage.py check``).

Each message names the setting to change. A Celery worker runs them too, before it consumes
(``reliability.worker``): a worker with an unsafe configuration refuses to start, because it is
the process that would apply messages twice or lose them.
"""

from __future__ import annotations

from typing import Any

from django.core.checks import CheckMessage, Error, Tags, Warning, register

from reliability.conf import settings
from reliability.ops.retention import retention_horizons_check

TAG = "reliability"
SIGNING_SECRET_MIN_BYTES = 32


@register(TAG, Tags.compatibility)
def signing_keys_check(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    keys = settings.RELIABILITY_SIGNING_KEYS
    if not isinstance(keys, dict) or not keys:
        return [
            Error(
                "RELIABILITY_SIGNING_KEYS is not set: every envelope is signed, and no default key is safe.",
                hint="Set RELIABILITY_SIGNING_KEYS = {'key-id': '<32+ random bytes>'} (from the environment).",
                id="reliability.E001",
            )
        ]
    problems: list[CheckMessage] = [
        Error(
            f"RELIABILITY_SIGNING_KEYS[{key_id!r}] must be a secret of {SIGNING_SECRET_MIN_BYTES}+ bytes.",
            hint="Generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'",
            id="reliability.E002",
        )
        for key_id, secret in keys.items()
        if not key_id
        or not isinstance(secret, str | bytes)
        or len(secret.encode() if isinstance(secret, str) else secret) < SIGNING_SECRET_MIN_BYTES
    ]
    if settings.RELIABILITY_SIGNING_KEY_ID not in keys:
        problems.append(
            Error(
                f"RELIABILITY_SIGNING_KEY_ID {settings.RELIABILITY_SIGNING_KEY_ID!r} is not in "
                "RELIABILITY_SIGNING_KEYS.",
                hint="Name one of the keys in RELIABILITY_SIGNING_KEYS, or leave it unset (the first signs).",
                id="reliability.E003",
            )
        )
    return problems


@register(TAG)
def retention_horizons_system_check(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    return [
        Error(problem, id="reliability.E004")
        for problem in retention_horizons_check(
            dedupe_window_s=settings.RELIABILITY_DEDUPE_WINDOW_S,
            outbox_retention_s=settings.RELIABILITY_OUTBOX_RETENTION_S,
            max_message_age_s=settings.RELIABILITY_MAX_MESSAGE_AGE_S,
            reconcile_grace_s=settings.RELIABILITY_RECONCILE_GRACE_S,
            reconcile_max_attempts=settings.RELIABILITY_RECONCILE_MAX_ATTEMPTS,
            dead_letter_replay_window_s=settings.RELIABILITY_DEAD_LETTER_REPLAY_WINDOW_S,
        )
    ]


@register(TAG)
def partitions_check(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    problems: list[CheckMessage] = []
    width_s, ahead = settings.RELIABILITY_PARTITION_WIDTH_S, settings.RELIABILITY_PARTITIONS_AHEAD
    if width_s < 1 or ahead < 2:
        problems.append(
            Error(
                f"RELIABILITY_PARTITION_WIDTH_S ({width_s:g}s) must be at least 1 and RELIABILITY_PARTITIONS_AHEAD "
                f"({ahead}) at least 2: the slice an insert needs must exist before its time comes.",
                hint="Raise RELIABILITY_PARTITION_WIDTH_S or RELIABILITY_PARTITIONS_AHEAD.",
                id="reliability.E010",
            )
        )
    if settings.RELIABILITY_ID_GENERATOR != "uuid7":
        problems.append(
            Warning(
                f"RELIABILITY_ID_GENERATOR {settings.RELIABILITY_ID_GENERATOR!r} makes ids that do not begin "
                "with their time: their outbox and message-log rows go to the default partitions, which "
                "retention empties row by row (at most 1,000 x 50 rows per table per run), not by "
                "dropping partitions.",
                hint="Use the default, uuid7, for tables whose retention costs the same at any volume.",
                id="reliability.W002",
            )
        )
    return problems


@register(TAG)
def relay_claim_check(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    window_s = settings.RELIABILITY_CONNECT_TIMEOUT_S + settings.RELIABILITY_CONFIRM_TIMEOUT_S
    if settings.RELIABILITY_RELAY_CLAIM_S >= 2 * window_s:
        return []
    return [
        Error(
            f"RELIABILITY_RELAY_CLAIM_S ({settings.RELIABILITY_RELAY_CLAIM_S:g}s) must be at least twice "
            f"RELIABILITY_CONNECT_TIMEOUT_S + RELIABILITY_CONFIRM_TIMEOUT_S ({window_s:g}s): a claim must "
            "outlast the publish window it covers, or two relays publish the same rows.",
            hint="Raise RELIABILITY_RELAY_CLAIM_S or lower the two timeouts.",
            id="reliability.E005",
        )
    ]


@register(TAG)
def id_generator_check(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    from reliability.ids import GENERATORS

    generator = settings.RELIABILITY_ID_GENERATOR
    if generator not in GENERATORS:
        return [
            Error(
                f"RELIABILITY_ID_GENERATOR must be one of {', '.join(GENERATORS)}; got {generator!r}.",
                id="reliability.E006",
            )
        ]
    if generator in {"snowflake", "redis"}:
        try:
            import redis  # noqa: F401 - only whether it is installed
        except ImportError:
            return [
                Error(
                    f"RELIABILITY_ID_GENERATOR {generator!r} needs Redis, which is not installed.",
                    hint="pip install 'django-exactly-once[redis]', or use the default, uuid7.",
                    id="reliability.E007",
                )
            ]
    return []


@register(TAG, Tags.database)
def databases_check(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    from django.conf import settings as django_settings

    unknown = [alias for alias in settings.RELIABILITY_DATABASES if alias not in django_settings.DATABASES]
    return [
        Error(
            f"RELIABILITY_DATABASES names {alias!r}, which is not in DATABASES.",
            id="reliability.E008",
        )
        for alias in unknown
    ]


@register(TAG)
def database_wait_check(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    from django.conf import settings as django_settings

    wait_s = settings.RELIABILITY_DATABASE_WAIT_MAX_S
    soft_limit_s = getattr(django_settings, "CELERY_TASK_SOFT_TIME_LIMIT", None)
    if wait_s >= 0 and (not soft_limit_s or wait_s < soft_limit_s):
        return []
    return [
        Error(
            f"RELIABILITY_DATABASE_WAIT_MAX_S ({wait_s:g}s) must be at least 0 and below "
            f"CELERY_TASK_SOFT_TIME_LIMIT ({soft_limit_s}s): a delivery waiting for its database must "
            "go back to the queue before its time limit ends the task.",
            hint="Lower RELIABILITY_DATABASE_WAIT_MAX_S.",
            id="reliability.E009",
        )
    ]


@register(TAG)
def fault_injection_check(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    if not settings.RELIABILITY_FAULT_INJECTION:
        return []
    return [
        Warning(
            "RELIABILITY_FAULT_INJECTION is on: processes may kill themselves at the points named in "
            "RELIABILITY_FAULTS.",
            hint="Only for tests; never in production.",
            id="reliability.W001",
        )
    ]


def reliability_errors() -> list[CheckMessage]:
    """The serious problems of this configuration (what a worker refuses to start with)."""
    from django.core.checks import run_checks

    return [message for message in run_checks(tags=[TAG]) if message.is_serious()]
