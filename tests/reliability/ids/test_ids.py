"""Message ids: the UUIDv8 carrier, the snowflake generator, worker id leases, the four generators.

The lease tests use the real Redis on 127.0.0.1:6379, database 15, under a key prefix
private to the test (deleted in ``addCleanup``), so they share nothing with a demo or
another test run. "Flushing" Redis there means deleting every key under that prefix:
for the generator that is exactly what FLUSHDB does, without touching other tests'
keys in the same database. Unless a test is about Redis losing its data, it first
records the lease epoch as old (a Redis that has kept its data for a while), so
claims do not wait out the after-loss quarantine.
"""

import itertools
import logging
import multiprocessing
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any
from unittest import mock

import redis
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.test import SimpleTestCase, TestCase, override_settings

from reliability import ids
from reliability.ids import (
    MAX_SEQUENCE,
    ClockMovedBackwards,
    RedisWorkerIdLeases,
    SnowflakeGenerator,
    WorkerIdUnavailable,
    message_id_from_int,
    message_id_int,
    message_id_new,
    snowflake_parts,
)

TEST_REDIS_URL = "redis://127.0.0.1:6379/15"


def closed_port_url() -> str:
    """Return a Redis URL on a local port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


def is_strictly_increasing(values: list[Any]) -> bool:
    return all(a < b for a, b in itertools.pairwise(values))


def snowflake_ids_in_child(generator: SnowflakeGenerator, count: int, start: Any, results: Any) -> None:
    """Make ``count`` ids with the generator inherited from the parent (runs in a forked child)."""
    start.wait(timeout=30)
    made = [generator.next_id() for _ in range(count)]
    results.put((os.getpid(), generator.worker_id, made))
    generator.close()  # a forked pool child leaves through os._exit: atexit would not run


def error_in_forked_child(generator: SnowflakeGenerator, results: Any) -> None:
    try:
        generator.next_id()
    except WorkerIdUnavailable as exc:
        results.put(str(exc))
    else:
        results.put("no error")


def worker_id_in_forked_child(generator: SnowflakeGenerator, results: Any) -> None:
    value = generator.next_id()
    grant = generator.grant
    results.put((snowflake_parts(value)[1], grant.token if grant else None))


class RedisTestMixin:
    """A private key prefix in Redis database 15, removed after the test."""

    addCleanup: Callable[..., None]
    id: Callable[[], str]

    def setUp(self) -> None:
        super().setUp()  # type: ignore[misc]
        quiet = logging.getLogger("reliability.ids")  # leases log at INFO; tests assert the warnings
        self.addCleanup(quiet.setLevel, quiet.level)
        quiet.setLevel(logging.ERROR)
        self.redis = redis.Redis.from_url(TEST_REDIS_URL)
        self.addCleanup(self.redis.close)
        self.prefix = f"test-ids:{os.getpid()}:{self.id().rsplit('.', 1)[-1]}:"
        self.addCleanup(self.flush)

    def flush(self) -> None:
        """Delete every key under the test's prefix: what FLUSHDB does to the generator's keys."""
        keys = list(self.redis.scan_iter(match=self.prefix + "*", count=1000))
        if keys:
            self.redis.delete(*keys)

    def age_epoch(self) -> None:
        """Record that this Redis has kept its data for a long time (no quarantine)."""
        self.redis.set(self.prefix + "epoch", 0)

    def generator(self, **kwargs: Any) -> SnowflakeGenerator:
        options: dict[str, Any] = {"redis_url": TEST_REDIS_URL, "key_prefix": self.prefix, "lease_ttl_s": 5}
        options.update(kwargs)
        generator = SnowflakeGenerator(**options)
        self.addCleanup(generator.close)
        return generator

    def leases(self, ttl_ms: int = 5000) -> RedisWorkerIdLeases:
        leases = RedisWorkerIdLeases(redis_url=TEST_REDIS_URL, ttl_ms=ttl_ms, key_prefix=self.prefix)
        self.addCleanup(leases.client.close)
        return leases

    def holder(self, worker_id: int) -> Any:
        return self.redis.get(f"{self.prefix}worker:{worker_id}")


class MessageIdCarrierTests(SimpleTestCase):
    def test_v8_round_trip_keeps_every_64_bit_id(self) -> None:
        rng = random.Random(7)
        values = [0, 1, 0xF, 0x10, 0xFFFF, 0x10000, 2**63 - 1, 2**63, 2**64 - 1]
        values += [rng.getrandbits(64) for _ in range(5000)]
        for value in values:
            self.assertEqual(message_id_int(message_id_from_int(value)), value)

    def test_v8_is_version_8_with_the_rfc_variant_and_a_zero_tail(self) -> None:
        message_id = message_id_from_int(2**64 - 1)
        self.assertEqual(message_id.version, 8)
        self.assertEqual(message_id.variant, uuid.RFC_4122)
        self.assertEqual(message_id.int & ((1 << 58) - 1), 0)
        self.assertEqual(str(message_id), "ffffffff-ffff-8fff-bc00-000000000000")

    def test_v8_order_follows_the_id_order(self) -> None:
        rng = random.Random(11)
        for _ in range(5000):
            a, b = rng.getrandbits(64), rng.getrandbits(rng.choice([8, 16, 40, 64]))
            ua, ub = message_id_from_int(a), message_id_from_int(b)
            self.assertEqual(a < b, ua < ub)
            # PostgreSQL compares uuid bytes, left to right.
            self.assertEqual(a < b, ua.bytes < ub.bytes)

    def test_other_uuids_carry_no_id(self) -> None:
        self.assertIsNone(message_id_int(uuid.uuid4()))
        self.assertIsNone(message_id_int(ids.uuid7_new()))
        foreign_v8 = uuid.UUID(int=message_id_from_int(5).int | 1)  # a v8 with a non-zero tail
        self.assertIsNone(message_id_int(foreign_v8))

    def test_ids_outside_64_bits_are_refused(self) -> None:
        for value in (-1, 2**64):
            with self.assertRaises(ValueError):
                message_id_from_int(value)


class SnowflakeTests(SimpleTestCase):
    """A configured worker id: no Redis involved."""

    def test_layout_is_timestamp_worker_sequence(self) -> None:
        generator = SnowflakeGenerator(worker_id=513)
        before = ids.time_ms()
        value = generator.next_id()
        unix_ms, worker_id, sequence = snowflake_parts(value)
        self.assertEqual(worker_id, 513)
        self.assertLessEqual(before, unix_ms)
        self.assertLessEqual(unix_ms, ids.time_ms())
        self.assertEqual(sequence, 0)
        self.assertLess(value, 2**63)  # the sign bit stays clear

    def test_ids_strictly_increase_in_one_process(self) -> None:
        generator = SnowflakeGenerator(worker_id=1)
        made = [generator.next_id() for _ in range(50_000)]
        self.assertTrue(is_strictly_increasing(made))

    def test_threads_share_the_generator_without_duplicates(self) -> None:
        generator = SnowflakeGenerator(worker_id=2)
        per_thread: list[list[int]] = [[] for _ in range(4)]

        def make(out: list[int]) -> None:
            out.extend(generator.next_id() for _ in range(10_000))

        threads = [threading.Thread(target=make, args=(out,)) for out in per_thread]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        everything = [value for out in per_thread for value in out]
        self.assertEqual(len(set(everything)), 40_000)
        for out in per_thread:
            self.assertTrue(is_strictly_increasing(out))

    def test_small_clock_rollback_is_waited_out(self) -> None:
        generator = SnowflakeGenerator(worker_id=3)
        step_back = [0]
        generator.clock = lambda: ids.time_ms() - step_back[0]
        made = [generator.next_id() for _ in range(100)]
        slept: list[float] = []

        def sleep(seconds: float) -> None:
            slept.append(seconds)
            time.sleep(seconds)

        generator.sleep = sleep
        step_back[0] = 10
        with self.assertLogs("reliability.ids", "WARNING") as logs:
            made += [generator.next_id() for _ in range(100)]
        self.assertRegex(logs.output[0], r"the clock moved back by \d+ ms; waiting it out")
        self.assertGreater(sum(slept), 0)  # it slept rather than reuse a millisecond
        self.assertTrue(is_strictly_increasing(made))

    def test_large_clock_rollback_raises(self) -> None:
        generator = SnowflakeGenerator(worker_id=4)
        step_back = [0]
        generator.clock = lambda: ids.time_ms() - step_back[0]
        last = generator.next_id()
        step_back[0] = 5000
        with self.assertRaisesMessage(ClockMovedBackwards, "RELIABILITY_SNOWFLAKE_MAX_BACKWARD_MS") as caught:
            generator.next_id()
        self.assertRegex(str(caught.exception), r"moved back by (49\d\d|5\d\d\d) ms")
        step_back[0] = 0
        self.assertGreater(generator.next_id(), last)

    def test_sequence_overflow_waits_for_the_next_millisecond(self) -> None:
        generator = SnowflakeGenerator(worker_id=5)
        now = [ids.time_ms()]
        sleeps: list[float] = []

        def sleep(seconds: float) -> None:
            sleeps.append(seconds)
            now[0] += 1

        generator.clock = lambda: now[0]
        generator.sleep = sleep
        made = [generator.next_id() for _ in range(MAX_SEQUENCE + 2)]
        parts = [snowflake_parts(value) for value in made]
        self.assertEqual({unix_ms for unix_ms, _, _ in parts[:-1]}, {now[0] - 1})
        self.assertEqual([sequence for _, _, sequence in parts[:-1]], list(range(MAX_SEQUENCE + 1)))
        self.assertEqual(parts[-1], (now[0], 5, 0))
        self.assertEqual(len(sleeps), 1)
        self.assertTrue(is_strictly_increasing(made))

    def test_configured_worker_id_needs_no_redis(self) -> None:
        with override_settings(
            RELIABILITY_ID_GENERATOR="snowflake",
            RELIABILITY_SNOWFLAKE_WORKER_ID=42,
            RELIABILITY_REDIS_URL=closed_port_url(),
        ):
            self.addCleanup(close_generators_made_since, set(ids._snowflakes))
            made = [message_id_new() for _ in range(1000)]
        decoded = [message_id_int(message_id) for message_id in made]
        self.assertEqual({snowflake_parts(value)[1] for value in decoded if value is not None}, {42})
        self.assertTrue(is_strictly_increasing(made))

    def test_worker_id_out_of_range_is_refused(self) -> None:
        with self.assertRaisesMessage(ImproperlyConfigured, "RELIABILITY_SNOWFLAKE_WORKER_ID"):
            SnowflakeGenerator(worker_id=1024)


class WorkerIdLeaseTests(RedisTestMixin, SimpleTestCase):
    def test_two_leases_never_share_a_worker_id(self) -> None:
        self.age_epoch()
        leases = self.leases()
        granted: list[int] = []
        barrier = threading.Barrier(64)

        def claim() -> None:
            barrier.wait()
            granted.append(leases.claim(start=7).worker_id)  # all start at the same id

        threads = [threading.Thread(target=claim) for _ in range(64)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.assertEqual(len(granted), 64)
        self.assertEqual(len(set(granted)), 64)

    def test_no_worker_id_left_raises(self) -> None:
        self.age_epoch()
        with self.redis.pipeline() as pipe:
            for worker_id in range(1024):
                pipe.set(f"{self.prefix}worker:{worker_id}", "someone-else", px=60_000)
            pipe.execute()
        with self.assertRaisesMessage(WorkerIdUnavailable, "all 1024 snowflake worker ids are leased"):
            self.leases().claim(start=0)

    def test_a_successor_starts_above_the_previous_holders_promise(self) -> None:
        self.age_epoch()
        leases = self.leases(ttl_ms=300)
        first = leases.claim(start=9)
        time.sleep(0.4)  # the holder died without releasing: its lease expires
        second = leases.claim(start=9)
        self.assertEqual(second.worker_id, 9)
        self.assertGreater(second.not_before_ms, first.promise_ms)

    def test_a_released_worker_id_is_reused_without_waiting(self) -> None:
        self.age_epoch()
        first = self.generator()
        with mock.patch("reliability.ids.snowflake.random.randrange", return_value=11):
            last = first.next_id()
        first.close()
        self.assertIsNone(self.holder(11))
        second = self.generator()
        started = time.monotonic()
        with mock.patch("reliability.ids.snowflake.random.randrange", return_value=11):
            value = second.next_id()
        self.assertLess(time.monotonic() - started, 0.5)
        self.assertEqual(second.worker_id, 11)
        self.assertGreater(snowflake_parts(value)[0], snowflake_parts(last)[0])

    def test_the_renewer_keeps_the_lease_alive(self) -> None:
        self.age_epoch()
        generator = self.generator(lease_ttl_s=0.4)
        generator.next_id()
        grant = generator.grant
        assert grant is not None
        time.sleep(0.7)  # longer than the TTL: only renewals keep it
        self.assertEqual(self.holder(grant.worker_id), grant.token.encode())
        self.assertGreater(self.redis.pttl(f"{self.prefix}worker:{grant.worker_id}"), 0)
        generator.next_id()

    def test_ids_stop_when_the_lease_cannot_be_renewed_for_longer_than_the_ttl(self) -> None:
        self.age_epoch()
        generator = self.generator(lease_ttl_s=30)
        last = generator.next_id()
        assert generator._leases is not None
        ahead = [0]
        generator.clock = lambda: ids.time_ms() + ahead[0]
        ahead[0] = 31_000  # 31 s without a renewal getting through
        with (
            mock.patch.object(generator._leases, "renew", side_effect=redis.ConnectionError("refused")),
            self.assertRaisesMessage(WorkerIdUnavailable, "was not renewed for longer than its TTL"),
        ):
            generator.next_id()
        self.assertGreater(generator.next_id(), last)  # Redis answers again: the renewal goes through

    def test_unreachable_redis_without_a_worker_id_raises(self) -> None:
        generator = self.generator(redis_url=closed_port_url())
        with self.assertRaisesMessage(WorkerIdUnavailable, "set RELIABILITY_SNOWFLAKE_WORKER_ID"):
            generator.next_id()

    def test_a_flushed_redis_makes_the_renewers_take_their_ids_back(self) -> None:
        self.age_epoch()
        one, two = self.generator(), self.generator()
        before = [one.next_id(), two.next_id()]
        grants = [one.grant, two.grant]
        assert grants[0] is not None and grants[1] is not None
        self.flush()
        with self.assertLogs("reliability.ids", "WARNING") as logs:
            self.assertTrue(one.renew_lease())
            self.assertTrue(two.renew_lease())
        self.assertEqual(len([line for line in logs.output if "took it back" in line]), 2)
        self.assertEqual((one.worker_id, two.worker_id), (grants[0].worker_id, grants[1].worker_id))
        self.assertNotEqual(one.worker_id, two.worker_id)
        self.assertEqual(self.holder(grants[0].worker_id), grants[0].token.encode())
        self.assertEqual(self.holder(grants[1].worker_id), grants[1].token.encode())
        self.assertGreater(one.next_id(), before[0])
        self.assertGreater(two.next_id(), before[1])

    def test_after_a_flush_a_newcomer_and_the_old_holder_never_stamp_the_same_worker_id(self) -> None:
        """The dangerous case: a new process claims, after a flush, the id a live one still uses."""
        self.age_epoch()
        old = self.generator(lease_ttl_s=0.6)
        with mock.patch("reliability.ids.snowflake.random.randrange", return_value=21):
            old_ids = [old.next_id() for _ in range(100)]
        old._stop.set()  # the test decides when the old holder renews
        logs = self.enterContext(self.assertLogs("reliability.ids", "WARNING"))
        self.flush()
        newcomer = self.generator(lease_ttl_s=0.6)
        newcomer_ids: list[int] = []
        claimed = threading.Event()

        def run_newcomer() -> None:
            with newcomer._lock:
                newcomer._claim_locked(prefer=21)  # it gets the old holder's id...
            claimed.set()
            newcomer_ids.extend(newcomer.next_id() for _ in range(1000))  # ...but waits to stamp

        thread = threading.Thread(target=run_newcomer)
        thread.start()
        self.assertTrue(claimed.wait(5))
        self.assertEqual(newcomer.worker_id, 21)
        # The old holder does not know yet: it keeps stamping with worker id 21.
        deadline = time.monotonic() + 0.15
        while time.monotonic() < deadline:
            old_ids.append(old.next_id())
        self.assertTrue(old.renew_lease())  # finds 21 taken: switches under its lock
        self.assertNotEqual(old.worker_id, 21)
        old_ids += [old.next_id() for _ in range(1000)]
        thread.join(10)
        self.assertTrue(any("lost the lease on snowflake worker id 21" in line for line in logs.output))
        self.assertTrue(any("worker id 21 is usable in" in line for line in logs.output))

        self.assertEqual(len(newcomer_ids), 1000)
        self.assertEqual(len(set(old_ids) | set(newcomer_ids)), len(old_ids) + len(newcomer_ids))
        self.assertTrue(is_strictly_increasing(old_ids))
        self.assertTrue(is_strictly_increasing(newcomer_ids))
        old_on_21 = [snowflake_parts(v)[0] for v in old_ids if snowflake_parts(v)[1] == 21]
        self.assertGreater(len(old_on_21), 100)  # it did stamp with 21 after the flush
        self.assertEqual({snowflake_parts(v)[1] for v in newcomer_ids}, {21})
        self.assertLess(max(old_on_21), min(snowflake_parts(v)[0] for v in newcomer_ids))

    def test_a_forked_child_leases_its_own_worker_id(self) -> None:
        self.age_epoch()
        parent = self.generator()
        parent.next_id()
        grant = parent.grant
        assert grant is not None
        context = multiprocessing.get_context("fork")
        results = context.Queue()
        child = context.Process(target=worker_id_in_forked_child, args=(parent, results))
        child.start()
        child_worker_id, child_token = results.get(timeout=10)
        child.join(10)
        self.assertNotEqual(child_worker_id, grant.worker_id)
        self.assertNotEqual(child_token, grant.token)
        self.assertEqual(self.holder(child_worker_id), child_token.encode())
        self.assertEqual(self.holder(grant.worker_id), grant.token.encode())  # the parent's is untouched
        self.assertEqual(snowflake_parts(parent.next_id())[1], grant.worker_id)

    def test_a_forked_child_refuses_a_configured_worker_id(self) -> None:
        parent = SnowflakeGenerator(worker_id=30)
        parent.next_id()
        context = multiprocessing.get_context("fork")
        results = context.Queue()
        child = context.Process(target=error_in_forked_child, args=(parent, results))
        child.start()
        error = results.get(timeout=10)
        child.join(10)
        self.assertIn("RELIABILITY_SNOWFLAKE_WORKER_ID=30 belongs to process", error)
        self.assertEqual(snowflake_parts(parent.next_id())[1], 30)

    def test_processes_with_leased_worker_ids_never_make_the_same_id(self) -> None:
        """Four forked children and the parent share one generator object; each leases its own id."""
        self.age_epoch()
        generator = self.generator()
        generator.next_id()
        context = multiprocessing.get_context("fork")
        start, results = context.Event(), context.Queue()
        children = [
            context.Process(target=snowflake_ids_in_child, args=(generator, 20_000, start, results))
            for _ in range(4)
        ]
        for child in children:
            child.start()
        start.set()
        parent_ids = [generator.next_id() for _ in range(20_000)]
        outcomes = [results.get(timeout=60) for _ in children]
        for child in children:
            child.join(10)
        worker_ids = {worker_id for _, worker_id, _ in outcomes} | {generator.worker_id}
        self.assertEqual(len(worker_ids), 5)
        everything = [value for _, _, made in outcomes for value in made] + parent_ids
        self.assertEqual(len(set(everything)), 100_000)
        for made in [parent_ids] + [made for _, _, made in outcomes]:
            self.assertTrue(is_strictly_increasing(made))


def close_generators_made_since(before: set[Any]) -> None:
    """Release the generators message_id_new() made for a test's settings, and only those."""
    for config in set(ids._snowflakes) - before:
        ids._snowflakes.pop(config).close()


class MessageIdNewTests(RedisTestMixin, TestCase):
    def setUp(self) -> None:
        super().setUp()
        self.addCleanup(close_generators_made_since, set(ids._snowflakes))

    def assertUniqueIncreasing(self, made: list[uuid.UUID]) -> None:
        self.assertEqual(len(set(made)), len(made))
        self.assertTrue(is_strictly_increasing(made))

    def test_uuid7_is_the_default_and_needs_no_redis(self) -> None:
        with override_settings(RELIABILITY_REDIS_URL=closed_port_url()):
            if hasattr(settings, "RELIABILITY_ID_GENERATOR"):
                delattr(settings, "RELIABILITY_ID_GENERATOR")
            ids._config.cache_clear()
            self.addCleanup(ids._config.cache_clear)
            made = [message_id_new() for _ in range(1000)]
        self.assertEqual({message.version for message in made}, {7})
        self.assertUniqueIncreasing(made)

    def test_snowflake_with_a_leased_worker_id(self) -> None:
        self.age_epoch()
        with (
            mock.patch("reliability.ids.snowflake.LEASE_KEY_PREFIX", self.prefix),
            override_settings(
                RELIABILITY_ID_GENERATOR="snowflake",
                RELIABILITY_SNOWFLAKE_WORKER_ID=None,
                RELIABILITY_REDIS_URL=TEST_REDIS_URL,
            ),
        ):
            made = [message_id_new() for _ in range(5000)]
        self.assertUniqueIncreasing(made)
        worker_ids = {snowflake_parts(message_id_int(m) or 0)[1] for m in made}
        self.assertEqual(len(worker_ids), 1)
        self.assertIsNotNone(self.holder(worker_ids.pop()))

    def test_uuid7(self) -> None:
        with override_settings(RELIABILITY_ID_GENERATOR="uuid7"):
            made = [message_id_new() for _ in range(5000)]
        self.assertEqual(len(set(made)), 5000)
        self.assertEqual({m.version for m in made}, {7})
        unix_ms = [m.int >> 80 for m in made]  # ordered to the millisecond only
        self.assertEqual(unix_ms, sorted(unix_ms))

    def test_redis_counter(self) -> None:
        counter = self.prefix + "message_id"
        with (
            mock.patch("reliability.ids.COUNTER_KEY", counter),
            override_settings(RELIABILITY_ID_GENERATOR="redis", RELIABILITY_REDIS_URL=TEST_REDIS_URL),
        ):
            made = [message_id_new() for _ in range(2000)]
            self.redis.delete(counter)  # Redis lost the counter...
            after_loss = message_id_new()
        self.assertUniqueIncreasing([*made, after_loss])  # ...and still never goes back
        self.assertEqual({m.version for m in made}, {8})

    def test_database_sequence(self) -> None:
        with override_settings(RELIABILITY_ID_GENERATOR="database"):
            made = [message_id_new() for _ in range(500)]
        self.assertUniqueIncreasing(made)
        self.assertEqual({m.version for m in made}, {8})

    def test_an_unknown_generator_is_refused(self) -> None:
        with (
            override_settings(RELIABILITY_ID_GENERATOR="uuid4"),
            self.assertRaisesMessage(ImproperlyConfigured, "RELIABILITY_ID_GENERATOR must be one of"),
        ):
            message_id_new()
