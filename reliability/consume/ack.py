"""Acknowledge or requeue: what the broker is told about a delivery.

A delivery that ends (its effect committed, or it was recorded as a dead letter) is
acknowledged by Celery once the task returns (``acks_late``). One that failed in a way that
may pass (the database went away, a deadlock, a bug a deploy fixes) is handed back to the
broker by ``delivery_requeue``, after a pause that grows with its deliveries; the quorum
queue's delivery limit bounds the loop and dead-letters what keeps failing.
"""

import logging
import time
from typing import NoReturn

from celery import Task
from celery.exceptions import Reject
from django.db import DatabaseError, InterfaceError, OperationalError, connections

from reliability.conf import settings
from reliability.ids import ClockMovedBackwards, WorkerIdUnavailable

logger = logging.getLogger(__name__)

# Worth another try: the database went away, or ids cannot be issued for a moment.
_TRANSIENT_ERRORS = (OperationalError, InterfaceError, ClockMovedBackwards, WorkerIdUnavailable)
# SQLSTATE classes worth retrying: serialization failure, deadlock.
_TRANSIENT_SQLSTATES = {"40001", "40P01"}
_DATABASE_POLL_S = 1.0  # how often a delivery waiting for its database asks it again


def delivery_queue(task: Task) -> str:
    """Return the queue a message came from (routing key = queue name in this topology)."""
    info = getattr(task.request, "delivery_info", None) or {}
    return str(info.get("routing_key") or getattr(task, "queue", "") or "")


def delivery_count(task: Task) -> int:
    """Return how often the broker delivered this message before (quorum queues say so)."""
    request = task.request
    raw = vars(request).get("x-delivery-count")
    if raw is None:
        raw = (getattr(request, "headers", None) or {}).get("x-delivery-count")
    try:
        return int(raw or 0)
    except (TypeError, ValueError):
        return 0


def error_is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` may pass by itself (the database away, a deadlock): worth a requeue."""
    if isinstance(exc, _TRANSIENT_ERRORS):
        return True
    cause = exc.__cause__
    return isinstance(exc, DatabaseError) and getattr(cause, "sqlstate", None) in _TRANSIENT_SQLSTATES


def delivery_requeue(task: Task, exc: Exception, *, what: str, using: str) -> NoReturn:
    """Hand the delivery back to the broker after a pause that grows with its deliveries.

    If the failure was the database being away and it still does not answer, wait for it
    first (up to ``RELIABILITY_DATABASE_WAIT_MAX_S``): requeued at once, a message would spend
    its deliveries on the outage and the broker would dead-letter it on the delivery limit.
    """
    deliveries = delivery_count(task)
    pause = min(0.1 * 2 ** min(deliveries, 6), settings.RELIABILITY_REQUEUE_PAUSE_MAX_S)
    log = logger.warning if error_is_transient(exc) else logger.error
    log(
        "%s for %s failed (delivery %d), requeueing in %.1fs: %s: %s",
        what,
        task.name,
        deliveries + 1,
        pause,
        type(exc).__name__,
        exc,
    )
    if (
        settings.RELIABILITY_DATABASE_WAIT_MAX_S > 0
        and _connection_lost(exc)
        and not _database_answers(using)
    ):
        _database_wait(using, task=task)
    else:
        time.sleep(pause)
    raise Reject(exc, requeue=True) from exc


def _connection_lost(exc: BaseException) -> bool:
    """An error a database that went away raises (not a conflict such as a deadlock)."""
    sqlstate = getattr(exc.__cause__, "sqlstate", None)
    return isinstance(exc, OperationalError | InterfaceError) and sqlstate not in _TRANSIENT_SQLSTATES


def _database_answers(using: str) -> bool:
    """Whether database ``using`` answers a query now, on a new connection."""
    connection = connections[using]
    if connection.in_atomic_block:  # not ours to close: leave the decision to the caller's pause
        return True
    try:
        connection.close()
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except DatabaseError:
        connection.close()
        return False
    return True


def _database_wait(using: str, *, task: Task) -> None:
    """Poll database ``using`` every second until it answers or the wait's bound passes."""
    bound = settings.RELIABILITY_DATABASE_WAIT_MAX_S
    logger.warning(
        "database %s unreachable: %s waits up to %.0fs for it before requeueing", using, task.name, bound
    )
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        time.sleep(min(_DATABASE_POLL_S, max(0.0, deadline - time.monotonic())))
        if _database_answers(using):
            logger.warning("database %s answers again: requeueing", using)
            return
