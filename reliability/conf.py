"""Every ``RELIABILITY_*`` setting, its default and what it means: the one place to look.

A project needs to set only ``RELIABILITY_SIGNING_KEYS`` (and a broker URL, and its queues declared
with ``reliability.quorum_queue``); everything else has a default here. The library reads its
settings through ``settings`` below, which falls back to these defaults and otherwise behaves
as ``django.conf.settings`` (``override_settings`` works as usual). The rules that tie settings
together are system checks (``reliability/checks.py``).
"""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Mapping
from typing import Any

from django.conf import settings as django_settings

DAY_S = 86_400.0


def _first_signing_key(current: Any) -> str:
    return next(iter(current.RELIABILITY_SIGNING_KEYS), "")


# name -> default (a callable is given these settings and computes it)
DEFAULTS: dict[str, Any] = {
    # --- where the library's tables live
    # Database aliases with reliability tables (outbox, message log, streams), each relayed,
    # reconciled and purged on its own.
    "RELIABILITY_DATABASES": ["default"],
    # --- signing: every envelope is signed with HMAC-SHA256 and verified before it is applied
    # {key_id: secret} (str or bytes), secrets of 32+ bytes. Required: no default key is safe.
    "RELIABILITY_SIGNING_KEYS": {},
    # The key that signs (the others still verify: rotation). Default: the first.
    "RELIABILITY_SIGNING_KEY_ID": _first_signing_key,
    # Accept envelopes signed before the address (task, kind) was part of the signature. Turn it
    # off once every queue and the dead-letter replay window have drained of such envelopes.
    "RELIABILITY_ACCEPT_UNADDRESSED_ENVELOPES": True,
    # --- broker deadlines (every connection the library opens)
    "RELIABILITY_BROKER_HEARTBEAT_S": 10.0,  # AMQP heartbeat; the peer is dead after two missed
    "RELIABILITY_CONNECT_TIMEOUT_S": 2.0,  # TCP connect plus the AMQP handshake
    "RELIABILITY_BROKER_IO_TIMEOUT_S": 10.0,  # SO_RCVTIMEO/SO_SNDTIMEO on the socket
    "RELIABILITY_CONFIRM_TIMEOUT_S": 5.0,  # longest wait for a publisher confirm
    # --- topology
    "RELIABILITY_DEAD_LETTER_EXCHANGE": "dead-letters",
    "RELIABILITY_DEAD_LETTER_QUEUE": "dead-letters",
    "RELIABILITY_QUORUM_REPLICAS": 3,  # quorum queue replicas on a cluster (a single node holds one)
    # Declare exchanges and queues before publishing (off when an operator owns the topology).
    "RELIABILITY_DECLARE_TOPOLOGY": True,
    # Celery's native delayed delivery (28 quorum queues per vhost); this library never needs it.
    "RELIABILITY_NATIVE_DELAYED_DELIVERY": False,
    # --- the relay (outbox -> broker)
    "RELIABILITY_RELAY_FAST_PATH": True,  # publish right after the producer's commit
    "RELIABILITY_RELAY_LOOP": True,  # a leader relay loop in each worker (advisory lock, LISTEN)
    "RELIABILITY_RELAY_LINGER_MS": 5.0,  # the loop waits this long to fill a window
    "RELIABILITY_RELAY_BATCH_SIZE": 500,  # rows claimed per pass
    "RELIABILITY_RELAY_WINDOW": 32,  # publishes in flight before waiting for their confirms
    "RELIABILITY_ENVELOPE_MAX_MESSAGES": 100,  # messages of one stream in one batch envelope
    "RELIABILITY_RELAY_GRACE_S": 2.0,  # the sweep leaves rows this young to the fast path
    "RELIABILITY_RELAY_CLAIM_S": 20.0,  # a relay's claim on rows; expired, anyone takes them over
    "RELIABILITY_RELAY_LEADER_FAIL_S": 10.0,  # a leader that failed this long steps down
    "RELIABILITY_RELAY_BACKOFF_BASE_S": 0.5,  # a row's retry delay after a failed publish, doubled
    "RELIABILITY_RELAY_BACKOFF_MAX_S": 30.0,
    # --- the consumer
    # Longest pause before a message that failed transiently goes back to the queue.
    "RELIABILITY_REQUEUE_PAUSE_MAX_S": 5.0,
    # A delivery that failed because its database cannot be reached waits up to this long for it
    # to answer again before going back: an outage spends one delivery per wait, not twenty in a
    # minute. Below the task's soft time limit and the broker's consumer_timeout.
    "RELIABILITY_DATABASE_WAIT_MAX_S": 60.0,
    # A message older than this is dead-lettered, not applied (it may be past the dedupe window).
    "RELIABILITY_MAX_MESSAGE_AGE_S": 3 * DAY_S,
    # --- streams and the reconciler
    "RELIABILITY_RECONCILE_GRACE_S": 30.0,  # a gap this old is re-published
    "RELIABILITY_RECONCILE_MAX_ATTEMPTS": 5,  # re-publishes before a gap is escalated
    "RELIABILITY_RECONCILE_BATCH_SIZE": 500,  # gaps handled per pass
    # --- retention (the system checks hold these above every way a message can come back)
    "RELIABILITY_DEDUPE_WINDOW_S": 14 * DAY_S,  # message-log rows kept: redeliveries recognised
    "RELIABILITY_OUTBOX_RETENTION_S": 14 * DAY_S,  # published outbox rows kept: re-publishable
    "RELIABILITY_DEAD_LETTER_REPLAY_WINDOW_S": 7 * DAY_S,  # dead letters may be replayed this long
    # The outbox and the message log are partitioned by the time in their (UUIDv7) message ids;
    # retention drops a partition once its whole slice is past the window, so a row is kept up to
    # one width longer than its window. Narrower: closer to the window, more partitions.
    "RELIABILITY_PARTITION_WIDTH_S": DAY_S,
    # Slices made ahead of now (by migrate and each retention run); the retention period must be
    # shorter than width x ahead, or inserts fall into the default partition until it runs.
    "RELIABILITY_PARTITIONS_AHEAD": 3,
    # --- message ids: uuid7 (default, no service), snowflake (Redis leases), redis, database
    "RELIABILITY_ID_GENERATOR": "uuid7",
    "RELIABILITY_REDIS_URL": "redis://127.0.0.1:6379/0",
    "RELIABILITY_SNOWFLAKE_WORKER_ID": None,  # a fixed worker id instead of a Redis lease
    "RELIABILITY_SNOWFLAKE_LEASE_TTL_S": 30.0,
    "RELIABILITY_SNOWFLAKE_MAX_BACKWARD_MS": 50,  # clock steps back this far are waited out
    # --- the figures (/metrics, the health page): read at a cost that does not grow with history
    # Rows per counter: a writer adds to the row of its database session (pg_backend_pid() modulo
    # this), so concurrent consumers rarely wait on one row lock; a reader sums them.
    "RELIABILITY_COUNTER_SHARDS": 16,
    # Queue depths are read from the broker by beat (evaluate_pipeline_mode) and recorded; older
    # readings than this are shown as unknown (beat or the broker stopped).
    "RELIABILITY_QUEUE_DEPTH_MAX_AGE_S": 60.0,
    # --- degrade mode: non-critical views answer 503 while the pipeline lags
    "RELIABILITY_DEGRADE_OUTBOX_AGE_S": 30.0,
    "RELIABILITY_DEGRADE_LAG_MESSAGES": 10_000,
    "RELIABILITY_DEGRADE_RETRY_AFTER_S": 30,
    # --- fault injection, for tests that kill processes at named points (never in production)
    "RELIABILITY_FAULT_INJECTION": False,
    "RELIABILITY_FAULTS": "",  # e.g. "relay.after_publish:kill"
    "RELIABILITY_FAULT_DIR": os.path.join(tempfile.gettempdir(), "reliability-faults"),
}


class ReliabilitySettings:
    """``django.conf.settings`` with this library's defaults underneath."""

    def __getattr__(self, name: str) -> Any:
        if name in DEFAULTS:
            try:
                return getattr(django_settings, name)
            except AttributeError:
                default = DEFAULTS[name]
                return default(self) if callable(default) else copy.copy(default)
        return getattr(django_settings, name)


settings = ReliabilitySettings()


def reliability_databases() -> list[str]:
    """Return the database aliases that hold reliability tables (outboxes and message logs)."""
    return list(settings.RELIABILITY_DATABASES)


_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}
# Read from the environment as "key_id:secret,key_id:secret" (see environment_settings).
_FROM_ENVIRONMENT_NEVER = {"RELIABILITY_DATABASES"}
_INTEGERS = {"RELIABILITY_SNOWFLAKE_WORKER_ID"}  # default None, an int when set


def environment_settings(environ: Mapping[str, str]) -> dict[str, Any]:
    """The ``RELIABILITY_*`` settings that ``environ`` sets, parsed as their defaults' types.

    For a settings module that reads its environment: ``globals().update(environment_settings(
    os.environ))``. Unset or empty variables are left out (the default applies). Signing keys are
    ``key_id:secret,key_id:secret``. A value that does not parse raises ImproperlyConfigured
    naming the variable.
    """
    from django.core.exceptions import ImproperlyConfigured

    found: dict[str, Any] = {}
    for name, default in DEFAULTS.items():
        raw = environ.get(name, "")
        if raw == "" or name in _FROM_ENVIRONMENT_NEVER:
            continue
        try:
            if name == "RELIABILITY_SIGNING_KEYS":
                found[name] = {
                    key_id.strip(): secret.encode()
                    for key_id, _, secret in (item.partition(":") for item in raw.split(",") if item.strip())
                }
            elif isinstance(default, bool):
                if raw.lower() not in _TRUE | _FALSE:
                    raise ValueError("not true or false")
                found[name] = raw.lower() in _TRUE
            elif isinstance(default, int) or name in _INTEGERS:
                found[name] = int(raw)
            elif isinstance(default, float):
                found[name] = float(raw)
            else:
                found[name] = raw
        except ValueError as exc:
            kind = type(default).__name__ if default is not None else "int"
            raise ImproperlyConfigured(f"{name} must be a {kind}, got {raw!r} ({exc})") from exc
    return found
