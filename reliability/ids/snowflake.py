"""Snowflake ids: 64-bit, made in process, with worker ids leased from Redis (the package
docstring says how the leases keep two processes from sharing a worker id).
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import socket
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

from reliability.exceptions import ClockMovedBackwards, ReliabilityError, WorkerIdUnavailable

try:  # the "redis" extra: only the snowflake and redis generators need it
    import redis
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry
except ImportError:  # pragma: no cover - exercised in an install without the extra
    redis = None  # type: ignore[assignment]

from reliability.ids.carrier import (
    EPOCH_MS,
    MAX_SEQUENCE,
    MAX_TIMESTAMP,
    MAX_WORKER_ID,
    SEQUENCE_BITS,
    WORKER_ID_BITS,
)

logger = logging.getLogger(__name__)

REDIS_URL_DEFAULT = "redis://127.0.0.1:6379/0"
LEASE_KEY_PREFIX = "reliability:snowflake:"

_NO_PROMISE = -1

_FOREVER = 1 << 62


def time_ms() -> int:
    """Return the wall clock in Unix milliseconds."""
    return time.time_ns() // 1_000_000


def _redis_client(url: str) -> redis.Redis:
    if redis is None:
        raise ImproperlyConfigured(
            "this RELIABILITY_ID_GENERATOR needs Redis: pip install 'django-exactly-once[redis]'"
            " (or use the default, uuid7, which needs no service)"
        )
    # Short timeouts and few retries: a caller waits in next_id or the renewer must
    # notice a dead Redis well within the lease TTL.
    return redis.Redis.from_url(
        url,
        socket_timeout=1.0,
        socket_connect_timeout=1.0,
        retry=Retry(ExponentialBackoff(cap=0.25, base=0.025), 2),
    )


def _redis_where(url: str) -> str:
    """Return host:port/db of a Redis URL, without credentials, for error messages."""
    parts = urlsplit(url)
    return f"{parts.hostname or '127.0.0.1'}:{parts.port or 6379}{parts.path or '/0'}"


# A worker id's promise lives in the hash reliability:snowflake:hwm:<n>: ``ms``, the
# last millisecond its holders may stamp, and ``by``, the holder that set it (who has
# already started above every earlier promise).
_EPOCH_NOW_LUA = "t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000))"

# ARGV: prefix, token, ttl_ms, start, count, promise_ms.
# Returns {worker id or -1, redis now ms, epoch ms, previous promise or -1}.
# The keys are derived inside the script, so this needs a standalone Redis (no Cluster).
_CLAIM_LUA = f"""
local prefix, token, ttl = ARGV[1], ARGV[2], ARGV[3]
local start, count, promise = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local epoch = tonumber(redis.call('GET', prefix .. 'epoch') or '')
if not epoch then
  epoch = now
  redis.call('SET', prefix .. 'epoch', {_EPOCH_NOW_LUA})
end
for i = 0, count - 1 do
  local n = (start + i) % count
  if redis.call('SET', prefix .. 'worker:' .. n, token, 'NX', 'PX', ttl) then
    local hwm_key = prefix .. 'hwm:' .. n
    local hwm = tonumber(redis.call('HGET', hwm_key, 'ms') or '-1')
    if tonumber(promise) > hwm then redis.call('HSET', hwm_key, 'ms', promise) end
    redis.call('HSET', hwm_key, 'by', token)
    return {{n, now, epoch, hwm}}
  end
end
return {{-1, now, epoch, -1}}
"""

# KEYS: worker, hwm, epoch. ARGV: token, ttl_ms, promise_ms.
# Returns {1, -1} renewed; {2, floor} taken back after Redis lost it (flush, restart,
# expiry) and nobody claimed it since: stamp above floor, the promise of whoever held it
# in between (-1 if nobody); {0, -1} lost to another holder.
_RENEW_LUA = f"""
local t = redis.call('TIME')
local owner = redis.call('GET', KEYS[1])
local status, floor = 1, -1
if owner == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  redis.call('SET', KEYS[3], {_EPOCH_NOW_LUA}, 'NX')
  if redis.call('HGET', KEYS[2], 'by') ~= ARGV[1] then
    floor = tonumber(redis.call('HGET', KEYS[2], 'ms') or '-1')
  end
  status = 2
elseif owner ~= ARGV[1] then
  return {{0, -1}}
else
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if tonumber(ARGV[3]) > tonumber(redis.call('HGET', KEYS[2], 'ms') or '-1') then
  redis.call('HSET', KEYS[2], 'ms', ARGV[3])
end
redis.call('HSET', KEYS[2], 'by', ARGV[1])
return {{status, floor}}
"""

# KEYS: worker, hwm. ARGV: token, last ms used. Returns 1 if it was ours.
_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], 'ms', ARGV[2], 'by', ARGV[1])
redis.call('DEL', KEYS[1])
return 1
"""


@dataclass(frozen=True)
class WorkerIdGrant:
    """A leased worker id: stamp milliseconds in [not_before_ms, promise_ms] only."""

    worker_id: int
    token: str
    not_before_ms: int
    promise_ms: int


@dataclass(frozen=True)
class LeaseRenewal:
    held: bool
    retaken: bool = False
    floor_ms: int = -1


class RedisWorkerIdLeases:
    """Claims, renews and releases snowflake worker ids in Redis (see the module docstring)."""

    def __init__(
        self,
        *,
        redis_url: str,
        ttl_ms: int,
        key_prefix: str = LEASE_KEY_PREFIX,
    ) -> None:
        self.redis_url = redis_url
        self.ttl_ms = ttl_ms
        self.key_prefix = key_prefix
        self.client = _redis_client(redis_url)
        self._claim = self.client.register_script(_CLAIM_LUA)
        self._renew = self.client.register_script(_RENEW_LUA)
        self._release = self.client.register_script(_RELEASE_LUA)

    def worker_key(self, worker_id: int) -> str:
        return f"{self.key_prefix}worker:{worker_id}"

    def hwm_key(self, worker_id: int) -> str:
        return f"{self.key_prefix}hwm:{worker_id}"

    @property
    def epoch_key(self) -> str:
        return f"{self.key_prefix}epoch"

    def claim(self, *, start: int, now_ms: int | None = None) -> WorkerIdGrant:
        """Lease the first free worker id from ``start`` on; raise WorkerIdUnavailable if none is.

        ``now_ms`` is the claimer's clock (the one it stamps ids with).
        """
        token = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(8)}"
        started = time.monotonic()
        local_now = time_ms() if now_ms is None else now_ms
        promise = local_now + self.ttl_ms
        worker_id, redis_now, epoch, hwm = (
            int(v)
            for v in self._claim(
                args=[self.key_prefix, token, self.ttl_ms, start, MAX_WORKER_ID + 1, promise]
            )
        )
        if worker_id < 0:
            raise WorkerIdUnavailable(
                f"all {MAX_WORKER_ID + 1} snowflake worker ids are leased in Redis at "
                f"{_redis_where(self.redis_url)}; run fewer processes or set "
                "RELIABILITY_SNOWFLAKE_WORKER_ID per process"
            )
        uptime_s = int(self.client.info("server")["uptime_in_seconds"])
        elapsed_ms = int((time.monotonic() - started) * 1000) + 1
        # How long Redis has kept its data, at least: since the epoch key was set and
        # since the server started (uptime is read after the claim, hence - elapsed).
        kept_ms = min(redis_now - epoch, uptime_s * 1000 - elapsed_ms)
        not_before = hwm + 1
        if kept_ms < self.ttl_ms:
            # Redis lost its data less than a TTL ago: someone may still be stamping
            # with this worker id under a promise Redis forgot. Wait the TTL out.
            not_before = max(not_before, local_now + elapsed_ms + self.ttl_ms - max(kept_ms, 0))
            logger.warning(
                "Redis at %s lost or restarted its data %d ms ago: snowflake worker id %d is usable in %d ms",
                _redis_where(self.redis_url),
                max(kept_ms, 0),
                worker_id,
                not_before - local_now,
            )
        return WorkerIdGrant(worker_id=worker_id, token=token, not_before_ms=not_before, promise_ms=promise)

    def renew(self, grant: WorkerIdGrant, *, promise_ms: int) -> LeaseRenewal:
        """Extend the lease and its promise, taking it back if Redis lost it and it is still free."""
        keys = [self.worker_key(grant.worker_id), self.hwm_key(grant.worker_id), self.epoch_key]
        status, floor = (int(v) for v in self._renew(keys=keys, args=[grant.token, self.ttl_ms, promise_ms]))
        return LeaseRenewal(held=status > 0, retaken=status == 2, floor_ms=floor)

    def release(self, grant: WorkerIdGrant, *, last_ms: int) -> bool:
        """Give the worker id back, promising no millisecond after ``last_ms``."""
        keys = [self.worker_key(grant.worker_id), self.hwm_key(grant.worker_id)]
        return bool(self._release(keys=keys, args=[grant.token, last_ms]))


_live_generators: weakref.WeakSet[SnowflakeGenerator] = weakref.WeakSet()


class SnowflakeGenerator:
    """Issues strictly increasing 64-bit snowflake ids for this process.

    Thread-safe (one lock) and fork-safe: a forked child starts with a fresh lock
    and no lease, and leases its own worker id on first use. ``clock`` and ``sleep``
    are attributes so tests can replace them.
    """

    def __init__(
        self,
        *,
        worker_id: int | None = None,
        redis_url: str = REDIS_URL_DEFAULT,
        lease_ttl_s: float = 30.0,
        max_backward_ms: int = 50,
        key_prefix: str = LEASE_KEY_PREFIX,
        clock: Callable[[], int] = time_ms,
    ) -> None:
        if worker_id is not None and not 0 <= worker_id <= MAX_WORKER_ID:
            raise ImproperlyConfigured(
                f"RELIABILITY_SNOWFLAKE_WORKER_ID must be 0..{MAX_WORKER_ID}, got {worker_id}"
            )
        if lease_ttl_s < 0.3:
            raise ImproperlyConfigured(f"RELIABILITY_SNOWFLAKE_LEASE_TTL_S must be >= 0.3, got {lease_ttl_s}")
        self.configured_worker_id = worker_id
        self.redis_url = redis_url
        self.ttl_ms = int(lease_ttl_s * 1000)
        self.max_backward_ms = max_backward_ms
        self.key_prefix = key_prefix
        self.clock = clock
        self.sleep: Callable[[float], None] = time.sleep
        self._last_ms = 0
        self._sequence = 0
        self._closed = False
        self._owner_pid = os.getpid()
        self._init_process_state()
        _live_generators.add(self)

    def _init_process_state(self) -> None:
        """Start this process's own state: called at construction and in a forked child."""
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._grant: WorkerIdGrant | None = None
        self._renewer: threading.Thread | None = None
        self._stop = threading.Event()
        self._leases: RedisWorkerIdLeases | None = None
        self._not_before_ms = 0
        self._prefer: int | None = None
        if self.configured_worker_id is None:
            self._worker_id: int | None = None
            self._promise_ms = _NO_PROMISE
            self._leases = RedisWorkerIdLeases(
                redis_url=self.redis_url, ttl_ms=self.ttl_ms, key_prefix=self.key_prefix
            )
        elif self._pid == self._owner_pid:
            self._worker_id = self.configured_worker_id
            self._promise_ms = _FOREVER
        else:  # a configured id is one process's: parent and child would make the same ids
            self._worker_id = None
            self._promise_ms = _NO_PROMISE

    @property
    def worker_id(self) -> int | None:
        """The worker id in use now (None before the first id or while none is held)."""
        return self._worker_id

    @property
    def grant(self) -> WorkerIdGrant | None:
        return self._grant

    def next_id(self) -> int:
        """Return the next id; strictly greater than every id this generator returned before."""
        if self._pid != os.getpid():  # forked without the at-fork hook (e.g. from C)
            self._init_process_state()
        while True:
            with self._lock:
                if self._closed:
                    raise WorkerIdUnavailable("this snowflake generator was closed")
                if self._worker_id is None or self.clock() > self._promise_ms:
                    self._refresh_lease_locked()
                wait_ms = self._not_before_ms - self.clock()
                if wait_ms <= 0:
                    return self._issue_locked()
            # A fresh lease may start in the future (Redis lost its data, or the previous
            # holder's clock ran ahead). Wait without the lock, so the renewer can work.
            if wait_ms > 2 * self.ttl_ms + self.max_backward_ms:  # a quarantine is at most one TTL
                raise WorkerIdUnavailable(
                    f"snowflake worker id {self._worker_id} was last used up to {wait_ms} ms ahead of "
                    "this host's clock; synchronise the hosts' clocks (NTP)"
                )
            self.sleep(wait_ms / 1000)

    def _issue_locked(self) -> int:
        now = self.clock()
        floor = max(self._last_ms, self._not_before_ms)
        if now < floor:
            behind = floor - now
            if behind > self.max_backward_ms:
                raise ClockMovedBackwards(
                    f"the clock moved back by {behind} ms, more than the {self.max_backward_ms} ms the "
                    "snowflake generator waits out; fix the clock (NTP should slew, not step) or raise "
                    "RELIABILITY_SNOWFLAKE_MAX_BACKWARD_MS"
                )
            logger.warning("the clock moved back by %d ms; waiting it out before issuing ids", behind)
            now = self._sleep_until(floor)
        if now == self._last_ms:
            self._sequence = (self._sequence + 1) & MAX_SEQUENCE
            if self._sequence == 0:  # 4096 ids in this millisecond: take the next one
                now = self._sleep_until(now + 1)
        else:
            self._sequence = 0
        if now > self._promise_ms:
            raise WorkerIdUnavailable(self._expired_message(now))
        elapsed = now - EPOCH_MS
        if not 0 <= elapsed <= MAX_TIMESTAMP:
            raise ReliabilityError(f"the clock ({now} ms) is outside the snowflake range, 2025 to 2094")
        worker_id = self._worker_id
        assert worker_id is not None
        self._last_ms = now
        return (elapsed << (WORKER_ID_BITS + SEQUENCE_BITS)) | (worker_id << SEQUENCE_BITS) | self._sequence

    def _sleep_until(self, target_ms: int) -> int:
        while True:
            now = self.clock()
            if now >= target_ms:
                return now
            if target_ms - now > self.max_backward_ms + 1:
                raise ClockMovedBackwards(
                    f"the clock moved back by {target_ms - now} ms while waiting for it; fix the clock "
                    "or raise RELIABILITY_SNOWFLAKE_MAX_BACKWARD_MS"
                )
            self.sleep((target_ms - now) / 1000)

    def _expired_message(self, now: int) -> str:
        leases = self._leases
        where = _redis_where(leases.redis_url) if leases else "?"
        return (
            f"the lease on snowflake worker id {self._worker_id} was not renewed for longer than its "
            f"TTL ({self.ttl_ms} ms, {now - self._promise_ms} ms overdue): Redis at {where} is "
            "unreachable; ids resume once a renewal gets through (or set RELIABILITY_SNOWFLAKE_WORKER_ID)"
        )

    # Lease management. The lock is held whenever the worker id changes, so a lost
    # lease is never used again once noticed, and no id is issued mid-switch.

    def _install_locked(self, grant: WorkerIdGrant) -> None:
        self._grant = grant
        self._worker_id = grant.worker_id
        self._promise_ms = grant.promise_ms
        # A new worker id may sort below the old one: start in a later millisecond so
        # this process's ids keep increasing.
        self._not_before_ms = max(grant.not_before_ms, self._last_ms + 1)
        logger.info("leased snowflake worker id %d (%s)", grant.worker_id, grant.token)
        if self._renewer is None or not self._renewer.is_alive():
            self._renewer = threading.Thread(
                target=self._renew_loop, args=(self._stop,), name="snowflake-lease-renewer", daemon=True
            )
            self._renewer.start()

    def _claim_locked(self, *, prefer: int | None) -> None:
        assert self._leases is not None
        start = prefer if prefer is not None else random.randrange(MAX_WORKER_ID + 1)  # noqa: S311 - spreads claims
        try:
            grant = self._leases.claim(start=start, now_ms=self.clock())
        except redis.RedisError as exc:
            raise WorkerIdUnavailable(
                f"cannot lease a snowflake worker id from Redis at {_redis_where(self.redis_url)}: {exc}; "
                "start Redis or set RELIABILITY_SNOWFLAKE_WORKER_ID"
            ) from exc
        self._install_locked(grant)

    def _apply_renewal_locked(self, grant: WorkerIdGrant, renewal: LeaseRenewal, promise: int) -> None:
        if not renewal.held:
            # Someone else holds our worker id now: stop using it before the next id, and
            # switch to another one (the same if it is free again) under the lock.
            logger.warning(
                "lost the lease on snowflake worker id %d (Redis lost it and another process claimed "
                "it); leasing another",
                grant.worker_id,
            )
            self._grant = None
            self._worker_id = None
            self._promise_ms = _NO_PROMISE
            self._prefer = grant.worker_id
            self._claim_locked(prefer=grant.worker_id)
            return
        if renewal.retaken:
            logger.warning(
                "Redis had lost the lease on snowflake worker id %d (flushed, restarted or expired); "
                "took it back",
                grant.worker_id,
            )
            self._not_before_ms = max(self._not_before_ms, renewal.floor_ms + 1)
        self._promise_ms = max(self._promise_ms, promise)

    def _refresh_lease_locked(self) -> None:
        """Renew now, or lease a new worker id, before issuing (lock held)."""
        if self._leases is None:
            if self._worker_id is None:
                raise WorkerIdUnavailable(
                    f"RELIABILITY_SNOWFLAKE_WORKER_ID={self.configured_worker_id} belongs to process "
                    f"{self._owner_pid}, and this process was forked from it: a worker id must not be "
                    "shared; leave it unset so each process leases its own from Redis"
                )
            return
        grant = self._grant
        if grant is None:
            self._claim_locked(prefer=self._prefer)
            return
        promise = self.clock() + self.ttl_ms
        try:
            renewal = self._leases.renew(grant, promise_ms=promise)
        except redis.RedisError as exc:
            raise WorkerIdUnavailable(f"{self._expired_message(self.clock())} ({exc})") from exc
        self._apply_renewal_locked(grant, renewal, promise)

    def renew_lease(self) -> bool:
        """Renew the lease (the renewer thread calls this every TTL/3); return True if one is held.

        The Redis call runs outside the lock, so a slow Redis never stalls ``next_id``
        while the current promise is still good. A lease lost to another process is
        replaced under the lock, trying the same worker id first.
        """
        try:
            with self._lock:
                if self._closed or self._leases is None or self._pid != os.getpid():
                    return False
                grant = self._grant
                if grant is None:  # an earlier claim failed: try again
                    self._claim_locked(prefer=self._prefer)
                    return True
            promise = self.clock() + self.ttl_ms
            try:
                renewal = self._leases.renew(grant, promise_ms=promise)
            except redis.RedisError as exc:
                logger.warning(
                    "could not renew the lease on snowflake worker id %d: %s; ids stop in %d ms unless "
                    "a renewal gets through",
                    grant.worker_id,
                    exc,
                    self._promise_ms - self.clock(),
                )
                return False
            with self._lock:
                if self._closed or self._grant is not grant:
                    return self._grant is not None
                self._apply_renewal_locked(grant, renewal, promise)
                return True
        except WorkerIdUnavailable as exc:
            logger.warning("%s", exc)
            return False

    def _renew_loop(self, stop: threading.Event) -> None:
        interval = self.ttl_ms / 3000
        healthy = True
        while not stop.wait(interval if healthy else min(interval, 1.0)):
            try:
                healthy = self.renew_lease()
            except Exception:  # the renewer must outlive any one failure
                logger.exception("renewing the snowflake worker id lease failed")
                healthy = False

    def close(self) -> None:
        """Stop renewing and give the worker id back (idempotent; also run at exit)."""
        if self._pid != os.getpid():  # the parent's lease is not ours to release
            return
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stop.set()
            grant, self._grant = self._grant, None
            self._worker_id = None
            self._promise_ms = _NO_PROMISE
            if grant is not None and self._leases is not None:
                try:
                    self._leases.release(grant, last_ms=max(self._last_ms, grant.not_before_ms - 1))
                except redis.RedisError as exc:
                    logger.warning(
                        "could not release snowflake worker id %d (it expires in the TTL): %s",
                        grant.worker_id,
                        exc,
                    )
            renewer = self._renewer
        if renewer is not None and renewer is not threading.current_thread():
            renewer.join(timeout=2)
