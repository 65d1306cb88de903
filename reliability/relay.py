"""The relay loop: publish outbox rows moments after they commit, many per envelope.

One loop per database is active at a time: it holds a session advisory lock
(``services.RELAY_LOCK``) on its own connection, so every other loop (one per
worker) stands by, and a loop that dies releases the lock with its connection.
The active loop LISTENs on ``services.RELAY_CHANNEL``: ``outbox_enqueue``
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
import threading
import time
from typing import Any

from django.db import connections

from . import services
from .conf import settings

logger = logging.getLogger(__name__)

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
            row = listener.execute(
                "SELECT pg_try_advisory_lock(%s, %s)", list(services.RELAY_LOCK)
            ).fetchone()
            if row[0]:
                listener.execute(f"LISTEN {services.RELAY_CHANNEL}")
                logger.info("relay loop for %s is active", self.using)
                return True
            self._stopping.wait(_IDLE_WAIT_S)
        return False

    def _relay_while_leading(self, listener: Any) -> bool:
        """Relay until stopping (False) or until this leader should step down (True)."""
        limit = settings.RELIABILITY_RELAY_BATCH_SIZE
        failing_since: float | None = None
        while not self._stopping.is_set():
            sent = services.outbox_relay_messages(ids=None, using=self.using, due_only=True, fresh_too=True)
            self.relayed += sent
            if not services.relay_path_failing(using=self.using):
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
