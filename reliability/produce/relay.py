"""The relay: claim outbox rows, publish them with confirms, mark them; and the relay loop that
publishes moments after commit, many per envelope.

Rows are claimed (owner and expiry, committed) before anything is published, published with no
transaction open, then marked published: no database lock is held across a broker wait, and a
claim that expires (``RELIABILITY_RELAY_CLAIM_S``) is taken over by any relay or the sweep.

One loop per database is active at a time: it holds a session advisory lock
(``RELAY_LOCK``) on its own connection, so every other loop (one per
worker) stands by, and a loop that dies releases the lock with its connection.
The active loop LISTENs on ``RELAY_CHANNEL``: ``outbox_enqueue``
notifies it in the producer's transaction, so the wake-up arrives at commit. It
then lingers ``RELIABILITY_RELAY_LINGER_MS`` to let more rows commit, and relays
everything pending in batches (``outbox_relay_messages``: envelopes of many
messages, pipelined confirms). While a loop runs, producers skip their inline
after-commit publish (``relay_loop_running``) and leave the packing to it.

A leader that cannot publish (the broker is out of its reach, not of the
others') hands the lock over: after ``RELIABILITY_RELAY_LEADER_FAIL_S`` of failed
windows while rows wait, it unlocks and stands back for as long again, so a
worker that can reach the broker takes the lead. A leader cut off from the
database loses the lock with its session: the listener session has an
``idle_session_timeout`` and is pinged every second while healthy, so the server
ends it (and frees the lock) once the pings stop arriving.

Nothing here is needed for correctness: rows the loop misses (it died, the
broker refused) are published by the beat sweep, and the consumer drops copies.
"""

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.db import DatabaseError, connections
from django.db.models import F, QuerySet
from django.utils import timezone

from reliability.conf import settings
from reliability.envelope import outbox_batch_envelope, outbox_envelope
from reliability.exceptions import PublishError
from reliability.faults import fault_point
from reliability.models import OutboxMessage, StreamCounter
from reliability.produce.publisher import Publish, publisher

logger = logging.getLogger(__name__)

# The relay loop (below) listens on this channel and holds this advisory
# lock while it runs: one relay loop per database publishes, the others stand by.
RELAY_CHANNEL = "reliability_outbox"

RELAY_LOCK = (0x6265616E, 1)

_relay_seen: dict[str, tuple[float, bool]] = {}


def relay_loop_running(*, using: str = "default") -> bool:
    """Whether a relay loop holds the relay lock of this database (cached for a second)."""
    now = time.monotonic()
    checked, running = _relay_seen.get(using, (0.0, False))
    if now - checked < 1.0:
        return running
    with connections[using].cursor() as cursor:
        cursor.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND classid = %s AND objid = %s AND objsubid = 2)",
            list(RELAY_LOCK),
        )
        running = bool(cursor.fetchone()[0])
    _relay_seen[using] = (now, running)
    return running


def stream_highs(*, streams: Iterable[str], using: str = "default") -> dict[str, int]:
    """Return the current last seq of each stream (committed values)."""
    rows = (
        StreamCounter.objects.using(using).filter(stream__in=set(streams)).values_list("stream", "last_seq")
    )
    return dict(rows)


def outbox_relay_batch(*, using: str = "default", limit: int | None = None) -> int:
    """Publish due pending messages (oldest first); return how many were confirmed."""
    return outbox_relay_messages(ids=None, using=using, limit=limit, due_only=True)


def _backoff(attempts: int) -> timedelta:
    seconds = min(
        settings.RELIABILITY_RELAY_BACKOFF_BASE_S * 2 ** max(attempts - 1, 0),
        settings.RELIABILITY_RELAY_BACKOFF_MAX_S,
    )
    return timedelta(seconds=seconds)


# Whether this process's last relay window went through. A relay pass that follows a
# failure (or is this process's first) sends one message on its own first: if the
# broker refuses or the route is broken, one message learns it, not a whole window.
_path_verified: dict[str, bool] = {}


def relay_path_verified(*, using: str = "default") -> bool:
    """Whether this process's last relay window to the broker went through (False before any)."""
    return _path_verified.get(using, False)


def relay_path_failing(*, using: str = "default") -> bool:
    """Whether this process's last relay window failed (False before any)."""
    return _path_verified.get(using) is False


def _relay_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


_OUTBOX_TABLE = OutboxMessage._meta.db_table
_CLAIM = (
    f"WITH claimable AS (SELECT id FROM {_OUTBOX_TABLE} WHERE {{conditions}} "  # noqa: S608 - no input in it
    "ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED) "
    f"UPDATE {_OUTBOX_TABLE} o SET claimed_by = %s, claim_expires_at = %s FROM claimable "
    "WHERE o.id = claimable.id RETURNING o.*"
)


def outbox_claim(
    *,
    ids: Iterable[int] | None,
    using: str = "default",
    limit: int,
    due_only: bool = True,
    fresh_too: bool = False,
) -> list[OutboxMessage]:
    """Claim up to ``limit`` pending rows for this relay, oldest first, and commit the claim.

    A claim is an owner and an expiry (``RELIABILITY_RELAY_CLAIM_S``), not a lock: the
    caller publishes after the claim committed, holding no database lock across the
    broker's round trips. Rows claimed by another relay are skipped until that claim
    expires; then any relay (or the beat sweep) takes them over. ``SKIP LOCKED`` keeps
    two relays claiming at the same moment from taking the same rows.
    """
    now = timezone.now()
    conditions, params = (
        ["status = %s", "(claim_expires_at IS NULL OR claim_expires_at < %s)"],
        [OutboxMessage.Status.PENDING.value, now],
    )
    if ids is not None:
        conditions.append("id = ANY(%s::bigint[])")
        params.append(list(ids))
    if due_only:
        conditions.append("(next_attempt_at <= %s OR attempts = 0)" if fresh_too else "next_attempt_at <= %s")
        params.append(now)
    owner, expires = _relay_owner(), now + timedelta(seconds=settings.RELIABILITY_RELAY_CLAIM_S)
    # One statement, so one round trip and atomic without a transaction block: the relay
    # loop runs it for every notification, and as a SELECT then an UPDATE in a transaction it
    # was half of the loop's CPU (py-spy, README "One trade per request").
    claim = _CLAIM.format(conditions=" AND ".join(conditions))
    claimed = OutboxMessage.objects.using(using).raw(claim, [*params, limit, owner, expires])
    return sorted(claimed, key=lambda row: row.pk)  # RETURNING follows no order


def outbox_relay_messages(
    *,
    ids: Iterable[int] | None,
    using: str = "default",
    limit: int | None = None,
    due_only: bool = True,
    fresh_too: bool = False,
) -> int:
    """Publish pending outbox rows, marking them sent only after a positive confirm.

    Rows are claimed first (``outbox_claim``, committed), then published with no
    transaction open, so several relays (and fast paths) can run at once without
    publishing the same row twice in parallel, and a relay cut off from the broker
    holds nothing but its own claim, for a bounded time. Rows for one task and queue
    are packed, stream by stream in seq order, into envelopes of up to
    ``RELIABILITY_ENVELOPE_MAX_MESSAGES``; a window of envelopes is put in flight at
    once and the confirms collected by delivery tag. Confirmed rows are marked sent
    in one statement; a nack, return or timeout marks only the rows of that
    envelope. A window that could not end before the claim expires is not started:
    its rows are released for the next pass. A crash after the publish and before
    the mark leaves the rows pending: they are published again once the claim
    expires, and the consumer's message log drops the copies. ``fresh_too``: also
    take rows never attempted whose grace period has not passed (the relay loop does
    not wait).
    """
    limit = limit or settings.RELIABILITY_RELAY_BATCH_SIZE
    batch = outbox_claim(ids=ids, using=using, limit=limit, due_only=due_only, fresh_too=fresh_too)
    if not batch:
        return 0
    # Start no window that could outlast the claim: past it, another relay may take the rows.
    window_s = settings.RELIABILITY_CONNECT_TIMEOUT_S + settings.RELIABILITY_CONFIRM_TIMEOUT_S
    claim_left = time.monotonic() + settings.RELIABILITY_RELAY_CLAIM_S - window_s
    highs = stream_highs(streams=(message.stream for message in batch), using=using)
    envelopes = outbox_envelopes_pack(batch, highs=highs, probe=not relay_path_verified(using=using))
    progress = _RelayProgress()
    try:
        _windows_publish(envelopes, using=using, claim_left=claim_left, progress=progress)
        if progress.sent:
            fault_point("relay.before_mark_sent", message_id=batch[0].message_id)
            _outbox_mark_sent(progress.sent, using=using)
    finally:
        unsent = [message for message in batch if message.pk not in progress.settled]
        if unsent:
            _outbox_claim_release(unsent, using=using)
    if progress.sent and ids is None:
        logger.info("relayed %d messages in %d envelopes", len(progress.sent), progress.envelopes)
    return len(progress.sent)


@dataclass
class _RelayProgress:
    """What one relay pass has done so far: kept whole if a publish raises, so the claim on the
    rows it never settled is released."""

    sent: list[OutboxMessage] = field(default_factory=list)  # confirmed, to be marked sent
    settled: set[int] = field(default_factory=set)  # confirmed, or failed and marked so
    envelopes: int = 0  # envelopes put in flight


def _windows_publish(
    envelopes: list[tuple[Publish, list[OutboxMessage]]],
    *,
    using: str,
    claim_left: float,
    progress: _RelayProgress,
) -> None:
    """Publish ``envelopes`` a window at a time, until done, a window fails or the claim runs short.

    The first window of a path not yet verified is one envelope (the probe).
    """
    window = settings.RELIABILITY_RELAY_WINDOW if relay_path_verified(using=using) else 1
    while progress.envelopes < len(envelopes) and time.monotonic() < claim_left:
        chunk = envelopes[progress.envelopes : progress.envelopes + window]
        progress.envelopes += len(chunk)
        if not _window_publish(chunk, using=using, progress=progress):
            # The broker is down or refusing: stop here rather than spend the whole batch on
            # timeouts. The rest stays pending, unattempted.
            return
        window = settings.RELIABILITY_RELAY_WINDOW


def _window_publish(
    chunk: list[tuple[Publish, list[OutboxMessage]]], *, using: str, progress: _RelayProgress
) -> bool:
    """Put one window of envelopes in flight and settle its rows; return whether all were confirmed."""
    fault_point("relay.before_publish", message_id=chunk[0][1][0].message_id)
    results = _publish_window([item for item, _ in chunk])
    fault_point("relay.after_publish", message_id=chunk[0][1][0].message_id)
    failed = False
    for (_, messages), error in zip(chunk, results, strict=True):
        progress.settled.update(message.pk for message in messages)
        if error is None:
            progress.sent.extend(messages)
        else:
            failed = True
            _outbox_publish_failed(messages, error, using=using)
    _path_verified[using] = not failed
    return not failed


def _outbox_rows(messages: list[OutboxMessage], *, using: str) -> QuerySet[OutboxMessage]:
    """The rows of ``messages``, found by their ids *and* their message ids.

    The message ids are the partition key: with them the planner reads only the slices that hold
    the rows (usually the newest), not every slice's index, and the relay's update holds the
    table that much less time (a retention ``DROP`` waits behind whoever holds it).
    """
    return OutboxMessage.objects.using(using).filter(
        pk__in=[message.pk for message in messages],
        message_id__in=[message.message_id for message in messages],
    )


def _outbox_mark_sent(messages: list[OutboxMessage], *, using: str) -> None:
    _outbox_rows(messages, using=using).filter(status=OutboxMessage.Status.PENDING).update(
        status=OutboxMessage.Status.SENT,
        sent_at=timezone.now(),
        last_error="",
        claimed_by="",
        claim_expires_at=None,
    )


def _outbox_claim_release(messages: list[OutboxMessage], *, using: str) -> None:
    """Hand rows this relay claimed but did not try back to every relay at once."""
    try:
        _outbox_rows(messages, using=using).filter(claimed_by=_relay_owner()).update(
            claimed_by="", claim_expires_at=None
        )
    except DatabaseError:  # the claim then simply expires
        logger.warning("could not release the claim on %d outbox rows", len(messages), exc_info=True)


def _publish_window(items: list[Publish]) -> list[PublishError | None]:
    """Publish a window of task messages; return, per message, None (confirmed) or the error."""
    try:
        if len(items) == 1:  # one message: the plain confirmed publish
            (item,) = items
            publisher().publish(
                task_name=item.task_name, queue=item.queue, message_id=item.task_id, envelope=item.envelope
            )
            return [None]
        return publisher().publish_many(items)
    except PublishError as exc:
        return [exc] * len(items)


def outbox_envelopes_pack(
    batch: list[OutboxMessage], *, highs: dict[str, int], probe: bool = False
) -> list[tuple[Publish, list[OutboxMessage]]]:
    """Pack outbox rows into task messages: per task and queue, stream by stream in seq order.

    One row alone keeps the single-message envelope; several share a batch envelope
    in which each keeps its own message_id and seq, so dedupe, gap detection and
    replay stay per message. ``probe``: the first row goes alone, first.
    """
    packed: list[tuple[Publish, list[OutboxMessage]]] = []
    if probe and batch:
        packed.append((_publish_of([batch[0]], highs), [batch[0]]))
        batch = batch[1:]
    groups: dict[tuple[str, str], list[OutboxMessage]] = {}
    for message in batch:
        groups.setdefault((message.task_name, message.queue), []).append(message)
    size = settings.RELIABILITY_ENVELOPE_MAX_MESSAGES
    for messages in groups.values():
        messages.sort(key=lambda message: (message.stream, message.seq))
        for start in range(0, len(messages), size):
            part = messages[start : start + size]
            packed.append((_publish_of(part, highs), part))
    return packed


def _publish_of(messages: list[OutboxMessage], highs: dict[str, int]) -> Publish:
    first = messages[0]
    if len(messages) == 1:
        envelope = outbox_envelope(first, producer_high=highs.get(first.stream))
        return Publish(first.task_name, first.queue, str(first.message_id), envelope)
    return Publish(
        first.task_name,
        first.queue,
        str(uuid.uuid4()),  # the task id of the envelope; each message keeps its own id
        outbox_batch_envelope(messages, highs=highs),
    )


def outbox_message_publish(message: OutboxMessage, *, producer_high: int | None) -> None:
    """Publish one outbox row with its original message_id; raise ``PublishError`` unless confirmed."""
    publisher().publish(
        task_name=message.task_name,
        queue=message.queue,
        message_id=str(message.message_id),
        envelope=outbox_envelope(message, producer_high=producer_high),
    )


def _outbox_publish_failed(messages: list[OutboxMessage], exc: Exception, *, using: str) -> None:
    attempts = max(message.attempts for message in messages) + 1
    _outbox_rows(messages, using=using).update(
        attempts=F("attempts") + 1,
        last_error=f"{type(exc).__name__}: {exc}"[:2000],
        next_attempt_at=timezone.now() + _backoff(attempts),
        claimed_by="",
        claim_expires_at=None,
    )
    logger.warning(
        "publish of %d message(s) from %s failed (attempt %d), left pending: %s",
        len(messages),
        messages[0].message_id,
        attempts,
        exc,
    )


# --- The relay loop ----------------------------------------------------------

_IDLE_WAIT_S = 1.0  # wake up this often without a notification (rows in backoff come due)
_RETRY_S = 1.0


class RelayLoop(threading.Thread):
    """A daemon thread relaying the outbox of one database until ``stop()``."""

    def __init__(self, *, using: str = "default", linger_s: float = 0.005) -> None:
        super().__init__(name=f"outbox-relay-{using}", daemon=True)
        self.using = using
        self.linger_s = linger_s
        self._stopping = threading.Event()
        self.relayed = 0

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        if self.is_alive():  # run() may also be called directly, in the caller's thread
            self.join(timeout)

    def run(self) -> None:
        while not self._stopping.is_set():
            listener = None
            step_down = False
            try:
                listener = self._listener()
                if self._lead(listener):
                    step_down = self._relay_while_leading(listener)
            except Exception:
                logger.warning(
                    "relay loop for %s failed; retrying in %.0fs", self.using, _RETRY_S, exc_info=True
                )
                self._stopping.wait(_RETRY_S)
            finally:
                if listener is not None:
                    try:
                        listener.close()  # ends the session: the lock goes with it
                    except Exception:
                        logger.debug("error closing the relay listener", exc_info=True)
                connections[self.using].close()
            if step_down:
                self._stopping.wait(settings.RELIABILITY_RELAY_LEADER_FAIL_S)

    def _listener(self) -> Any:
        """A connection of its own (autocommit) for the lock and LISTEN."""
        wrapper = connections[self.using]
        connection = wrapper.get_new_connection(wrapper.get_connection_params())
        connection.autocommit = True
        # Pinged every _IDLE_WAIT_S while this loop is healthy: a session that goes quiet
        # for longer is one whose worker is cut off, and the server ends it with its lock.
        idle_ms = int(max(settings.RELIABILITY_RELAY_LEADER_FAIL_S, 5 * _IDLE_WAIT_S) * 1000)
        connection.execute(f"SET idle_session_timeout = {idle_ms}")
        return connection

    def _lead(self, listener: Any) -> bool:
        """Wait until this loop holds the relay lock; False when stopping first."""
        while not self._stopping.is_set():
            row = listener.execute("SELECT pg_try_advisory_lock(%s, %s)", list(RELAY_LOCK)).fetchone()
            if row[0]:
                listener.execute(f"LISTEN {RELAY_CHANNEL}")
                logger.info("relay loop for %s is active", self.using)
                return True
            self._stopping.wait(_IDLE_WAIT_S)
        return False

    def _relay_while_leading(self, listener: Any) -> bool:
        """Relay until stopping (False) or until this leader should step down (True)."""
        limit = settings.RELIABILITY_RELAY_BATCH_SIZE
        failing_since: float | None = None
        while not self._stopping.is_set():
            sent = outbox_relay_messages(ids=None, using=self.using, due_only=True, fresh_too=True)
            self.relayed += sent
            if not relay_path_failing(using=self.using):
                failing_since = None
            else:
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since >= settings.RELIABILITY_RELAY_LEADER_FAIL_S:
                    logger.warning(
                        "relay loop for %s cannot publish for %.0fs: handing the lead to another worker",
                        self.using,
                        time.monotonic() - failing_since,
                    )
                    return True
            if sent >= limit:
                continue  # more is waiting
            woken = False
            for _ in listener.notifies(timeout=_IDLE_WAIT_S, stop_after=1):
                woken = True
            if woken and self.linger_s > 0:
                # Let a few more rows commit: one envelope for many of them.
                time.sleep(self.linger_s)
            for _ in listener.notifies(timeout=0, stop_after=1000):
                pass  # notifications already covered by the next pass
            listener.execute("SELECT 1")  # the ping that keeps the session (and the lock) alive
        return False
