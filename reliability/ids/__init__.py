"""Message ids: globally unique, assigned once at produce time, kept on every re-publish.

``message_id_new()`` returns a ``uuid.UUID`` from the generator named by
``settings.RELIABILITY_ID_GENERATOR``:

``"uuid7"`` (default)
    RFC 9562 UUIDv7 (48-bit Unix ms, a counter, random bits), made by uuid-utils: no
    coordination and no service at all, so placement never waits on Redis; monotonic
    within a process, ordered to the millisecond across processes.
``"snowflake"``
    64-bit ids made in process: ``0 | 41 bits ms since 2025-01-01T00:00:00Z |
    10 bits worker id | 12 bits sequence``. No network on the hot path; the worker
    id is configured (``RELIABILITY_SNOWFLAKE_WORKER_ID``) or leased from Redis, and
    ids stop (placement answers 503) once a leased id's lease runs out with Redis down.
``"redis"``
    ``INCR reliability:message_id`` on ``RELIABILITY_REDIS_URL``, one round trip per id,
    held at or above (ms since 2025) * 4096 by the Redis clock, so a Redis that lost the
    key resumes above every id it issued instead of at 1.
``"database"``
    ``nextval('reliability_message_id_seq')`` on the ``default`` database (migration
    0002), one round trip per id.

One column type for every generator
-----------------------------------
Every ``message_id`` column stays a PostgreSQL ``uuid``, so the generator can be
switched without a migration and ids from different generators live side by side.
The 64-bit generators are carried as an RFC 9562 **UUIDv8** (custom) whose value,
and therefore its byte order (how PostgreSQL compares ``uuid``), follows the
64-bit id::

     bits 127..80  custom_a  48 bits  id >> 16
     bits  79..76  version    4 bits  0b1000 (8)
     bits  75..64  custom_b  12 bits  (id >> 4) & 0xFFF
     bits  63..62  variant    2 bits  0b10 (RFC 9562)
     bits  61..58  custom_c   4 bits  id & 0xF
     bits  57..0   custom_c  58 bits  zero

Version and variant are constants, so ``a < b`` as ids iff ``a < b`` as UUIDs.
Monotonic ids keep the message-log and outbox unique indexes append-mostly: each
insert lands on the rightmost leaf instead of a random page, as UUIDv4 would.
``message_id_int`` decodes the id back (``None`` for anything else, e.g. a UUIDv7).

Snowflake worker ids and their guarantee
----------------------------------------
Two processes that stamp the same (millisecond, worker id) can make the same id, and
a duplicate message id is a lost message (every message log would take it for a
redelivery). A configured worker id is the operator's promise that it is unique.
Otherwise the generator leases one from Redis (standalone, ``noeviction``):

* **Claim**: ``SET reliability:snowflake:worker:<n> <token> NX PX <ttl>``, scanning
  from a random ``n`` inside one Lua script. The lease carries a *promise*, kept in
  the hash ``reliability:snowflake:hwm:<n>``: the holder stamps no millisecond past
  it. A new holder of ``n`` starts above the stored promise, so successive holders
  use disjoint milliseconds even if their clocks disagree or the old one is only
  paused, not dead.
* **Renew**: a daemon thread, every TTL/3, compare-and-pexpire in Lua, raising the
  promise to now + TTL. ``next_id`` raises ``WorkerIdUnavailable`` once the clock
  passes the promise, i.e. when Redis has been unreachable for longer than the TTL,
  rather than risk a duplicate. ``atexit`` releases (compare-and-delete, lowering the
  promise to the last millisecond really used, so a successor need not wait).
* **Redis lost the lease** (FLUSHDB, a restart without persistence or from an older
  snapshot, an expiry while this process was stalled): the renewal takes the same
  id back if nobody claimed it meanwhile, and starts above the promise of anyone
  who held it in between. If another process holds it now, the generator switches
  to a new worker id under its lock, so no id is issued with the lost one after the
  renewal saw it gone, and this process's ids keep increasing.
* **Claims right after a loss wait**: the promises went with the data, so a claim
  cannot see that a live process is still stamping with that id. A sentinel key
  (``reliability:snowflake:epoch``, set when it is missing) and the server's uptime
  tell how long Redis has kept its data; a claim made less than a TTL after a loss
  stamps only once a TTL has passed since it. By then every earlier holder has either
  renewed (and taken its id back, or switched) or run past its promise and stopped.
  The cost: processes that *start* within a TTL of a loss (or of the first use of an
  empty Redis) wait up to the TTL for their first id.

The residual risk, stated plainly: after Redis lost its data, uniqueness also relies
on the hosts' clocks agreeing to well within the TTL (NTP); a failover to a replica
that missed a recent claim or renewal is a loss the sentinel cannot see (run Redis
as one node for this, or accept up to one renewal interval of exposure); two losses
within one TTL can hide a holder that came in between. At most 1024 processes hold
a worker id at once; one killed without ``atexit`` (SIGKILL, ``os._exit`` in a
forked pool child) keeps its id until the TTL expires. A forked child never uses
its parent's lease: it leases its own. A configured worker id is per *process*: a
child forked from the process that uses it refuses to issue ids, but processes that
merely inherit the setting (the children of a prefork Celery worker, say) cannot be
told apart, so configure one only where each process gets its own value.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import uuid_utils.compat
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.db import connections

from reliability.conf import settings
from reliability.exceptions import ClockMovedBackwards, WorkerIdUnavailable
from reliability.ids import snowflake
from reliability.ids.carrier import (
    EPOCH_MS,
    MAX_SEQUENCE,
    message_id_from_int,
    message_id_int,
    snowflake_parts,
)
from reliability.ids.snowflake import (
    LEASE_KEY_PREFIX,
    REDIS_URL_DEFAULT,
    RedisWorkerIdLeases,
    SnowflakeGenerator,
    _live_generators,
    _redis_client,
    time_ms,
)

__all__ = [
    "EPOCH_MS",
    "GENERATORS",
    "LEASE_KEY_PREFIX",
    "MAX_SEQUENCE",
    "ClockMovedBackwards",
    "RedisWorkerIdLeases",
    "SnowflakeGenerator",
    "WorkerIdUnavailable",
    "database_next_id",
    "message_id_from_int",
    "message_id_generators_close",
    "message_id_int",
    "message_id_new",
    "redis_counter_next_id",
    "snowflake_parts",
    "time_ms",
    "uuid7_new",
]

logger = logging.getLogger(__name__)

GENERATORS = ("snowflake", "uuid7", "redis", "database")

COUNTER_KEY = "reliability:message_id"

DATABASE_SEQUENCE = "reliability_message_id_seq"


def uuid7_new() -> uuid.UUID:
    """Return a UUIDv7 (RFC 9562): 48-bit Unix milliseconds, a counter, random bits.

    Time-ordered ids keep the message-log index append-mostly (unlike UUIDv4), need
    no coordination between processes and no service (Redis, the database), and are
    monotonic within a process. Made by uuid-utils (Rust), a maintained
    implementation of the RFC, as a standard ``uuid.UUID``.
    """
    return uuid_utils.compat.uuid7()


@dataclass(frozen=True)
class _Config:
    generator: str
    worker_id: int | None
    redis_url: str
    lease_ttl_s: float
    max_backward_ms: int


@functools.cache
def _config() -> _Config:
    generator = settings.RELIABILITY_ID_GENERATOR
    if generator not in GENERATORS:
        raise ImproperlyConfigured(
            f"RELIABILITY_ID_GENERATOR must be one of {', '.join(GENERATORS)}; got {generator!r}"
        )
    return _Config(
        generator=generator,
        worker_id=settings.RELIABILITY_SNOWFLAKE_WORKER_ID,
        redis_url=settings.RELIABILITY_REDIS_URL,
        lease_ttl_s=float(settings.RELIABILITY_SNOWFLAKE_LEASE_TTL_S),
        max_backward_ms=int(settings.RELIABILITY_SNOWFLAKE_MAX_BACKWARD_MS),
    )


def _settings_changed(*, setting: str, **kwargs: Any) -> None:
    if setting.startswith("RELIABILITY_"):
        _config.cache_clear()


setting_changed.connect(_settings_changed, dispatch_uid="reliability.ids.settings_changed")

_registry_lock = threading.Lock()

_snowflakes: dict[_Config, SnowflakeGenerator] = {}

_counters: dict[str, Callable[..., Any]] = {}


def _snowflake(config: _Config) -> SnowflakeGenerator:
    generator = _snowflakes.get(config)
    if generator is None:
        with _registry_lock:
            generator = _snowflakes.get(config)
            if generator is None:
                generator = _snowflakes[config] = SnowflakeGenerator(
                    worker_id=config.worker_id,
                    redis_url=config.redis_url,
                    lease_ttl_s=config.lease_ttl_s,
                    max_backward_ms=config.max_backward_ms,
                    key_prefix=snowflake.LEASE_KEY_PREFIX,  # read at call time: tests patch it
                )
    return generator


# INCR, but never below (ms since EPOCH_MS) * 4096 by the Redis clock: a Redis that
# lost the key (FLUSHDB, restart, older snapshot) resumes above every id it issued
# before, instead of handing out 1, 2, 3 ... again and making new messages look like
# duplicates to every message log. A missing key (INCR gives 1) starts two
# milliseconds ahead, past whatever was issued in the current one. Lua numbers are
# doubles: exact below 2**53, which this stays under until 2094. ARGV: epoch seconds.
_COUNTER_LUA = """
local t = redis.call('TIME')
local ms = (tonumber(t[1]) - tonumber(ARGV[1])) * 1000 + math.floor(tonumber(t[2]) / 1000)
local value = redis.call('INCR', KEYS[1])
if value == 1 then ms = ms + 2 end
local floor = ms * 4096
if value < floor then
  redis.call('SET', KEYS[1], string.format('%.0f', floor))
  value = floor
end
return value
"""


def redis_counter_next_id(*, redis_url: str = REDIS_URL_DEFAULT, key: str = COUNTER_KEY) -> int:
    """Return the next value of the Redis counter (one round trip)."""
    script = _counters.get(redis_url)
    if script is None:
        with _registry_lock:
            script = _counters.setdefault(redis_url, _redis_client(redis_url).register_script(_COUNTER_LUA))
    return int(script(keys=[key], args=[EPOCH_MS // 1000]))


def database_next_id() -> int:
    """Return ``nextval('reliability_message_id_seq')`` on the default database."""
    with connections["default"].cursor() as cursor:
        cursor.execute(f"SELECT nextval('{DATABASE_SEQUENCE}')")
        row = cursor.fetchone()
    assert row is not None
    return int(row[0])


def message_id_new() -> uuid.UUID:
    """Return a new message id from the generator named by ``RELIABILITY_ID_GENERATOR``."""
    config = _config()
    if config.generator == "snowflake":
        return message_id_from_int(_snowflake(config).next_id())
    if config.generator == "uuid7":
        return uuid7_new()
    if config.generator == "redis":
        return message_id_from_int(redis_counter_next_id(redis_url=config.redis_url, key=COUNTER_KEY))
    return message_id_from_int(database_next_id())


def message_id_generators_close() -> None:
    """Release every worker id this process leased and forget the generators (tests, shutdown)."""
    with _registry_lock:
        generators = list(_snowflakes.values())
        _snowflakes.clear()
    for generator in generators:
        generator.close()


def _close_all_at_exit() -> None:
    for generator in list(_live_generators):
        generator.close()


def _after_fork_in_child() -> None:
    global _registry_lock
    _registry_lock = threading.Lock()  # another thread may have held it at fork time
    for generator in list(_live_generators):
        generator._init_process_state()


atexit.register(_close_all_at_exit)
os.register_at_fork(after_in_child=_after_fork_in_child)
