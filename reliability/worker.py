"""Celery worker pieces: the consumer blueprint (dead-lettering, bounded heartbeats) and the relay loop."""

import logging
from typing import Any

from celery import bootsteps, signals
from celery.worker import heartbeat
from celery.worker.consumer import Consumer
from celery.worker.consumer.heart import Heart

logger = logging.getLogger(__name__)


_DELAYED_DELIVERY_STEP = "celery.worker.consumer.delayed_delivery:DelayedDelivery"
_HEART_STEP = "celery.worker.consumer.heart:Heart"


class _BoundedHeartbeat(heartbeat.Heart):
    """Celery's worker-heartbeat event sender, with one reconnect per beat instead of endless ones.

    Celery publishes it with ``retry=True`` and no retry policy: kombu then reconnects
    until the broker answers, on the worker's event loop. Across a silent partition
    that loop stops, AMQP heartbeats go unchecked and the worker never notices it is
    cut off. A beat that cannot be sent is skipped: the next one follows in seconds.
    """

    def _send(self, event: str, retry: bool = True) -> Any:
        if self._send_sent_signal is not None:
            self._send_sent_signal(sender=self)
        try:
            return self.eventer.send(
                event,
                freq=self.interval,
                active=len(heartbeat.active_requests),
                processed=heartbeat.all_total_count[0],
                loadavg=heartbeat.load_average(),
                retry=retry,
                retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": 1, "interval_max": 1},
                **heartbeat.SOFTWARE_INFO,
            )
        except Exception as exc:  # noqa: BLE001 - a monitoring event, never worth stopping the loop for
            logger.warning("worker event %s not sent: %s", event, exc)
            return None


class BoundedHeart(Heart):
    """The ``Heart`` consumer step, sending through ``_BoundedHeartbeat``."""

    def start(self, c: Any) -> None:
        c.heart = _BoundedHeartbeat(c.timer, c.event_dispatcher, self.heartbeat_interval)
        c.heart.start()


class DeadLetteringConsumer(Consumer):
    """Celery's consumer, with three changes for an exactly-once pipeline.

    * An undecodable message is rejected (not acknowledged), so the broker
      dead-letters it. Celery's default acknowledges a body it cannot decode (bad
      JSON, a content type outside ``accept_content`` such as pickle): the message
      would be gone. The dead-letter drain then records it with its raw body.
    * Worker-heartbeat events give up after one reconnect (``BoundedHeart``).
    * Native delayed delivery (28 quorum queues per vhost) is set up only when
      ``RELIABILITY_NATIVE_DELAYED_DELIVERY`` asks for it.
    """

    class Blueprint(Consumer.Blueprint):
        @property
        def default_steps(self) -> list[Any]:
            from reliability.conf import settings

            steps: list[Any] = []
            for step in Consumer.Blueprint.default_steps:
                if step == _DELAYED_DELIVERY_STEP and not settings.RELIABILITY_NATIVE_DELAYED_DELIVERY:
                    continue
                steps.append(BoundedHeart if step == _HEART_STEP else step)
            return steps

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        logger.error(
            "cannot decode message %s (content type %s): %s; dead-lettering it",
            message.properties.get("correlation_id"),
            message.content_type,
            exc,
        )
        message.reject(requeue=False)


class OutboxRelayStep(bootsteps.StartStopStep):
    """Run the outbox relay loop (``reliability.produce.relay``) in the worker's main process.

    Every worker starts one loop per database; one of them is active at a time.
    ``RELIABILITY_RELAY_LOOP=false`` leaves publishing to the after-commit fast path
    and the beat sweep.
    """

    # After the pool: its children are forked before the loop's thread exists.
    requires = ("celery.worker.components:Pool",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.loops: list[Any] = []

    def include_if(self, parent: Any) -> bool:
        from reliability.conf import settings

        return bool(settings.RELIABILITY_RELAY_LOOP)

    def start(self, parent: Any) -> None:
        from reliability.conf import reliability_databases, settings
        from reliability.produce.relay import RelayLoop

        linger = settings.RELIABILITY_RELAY_LINGER_MS / 1000
        self.loops = [RelayLoop(using=alias, linger_s=linger) for alias in reliability_databases()]
        for loop in self.loops:
            loop.start()

    def stop(self, parent: Any) -> None:
        for loop in self.loops:
            loop.stop()
        self.loops = []

    shutdown = stop


CELERY_DEFAULT_CONSUMER = "celery.worker.consumer:Consumer"
DEAD_LETTERING_CONSUMER = "reliability.worker:DeadLetteringConsumer"


def worker_steps_install(app: Any) -> None:
    """Wire the library into a Celery app (``project/celery.py`` does, after ``config_from_object``).

    Adds the relay loop's worker step; makes ``DeadLetteringConsumer`` the worker's consumer
    unless the configuration names one of its own (``worker_consumer``); refuses to start a
    worker whose configuration fails the reliability system checks; and around each task closes
    the database connections Django would close around a request (for ``CELERY_DB_REUSE_MAX``).
    """
    app.steps["worker"].add(OutboxRelayStep)

    def consumer_install(sender: Any, **kwargs: Any) -> None:
        if sender.conf.worker_consumer == CELERY_DEFAULT_CONSUMER:
            sender.conf.worker_consumer = DEAD_LETTERING_CONSUMER

    app.on_after_configure.connect(consumer_install, weak=False)
    signals.worker_init.connect(_configuration_refuse_unsafe, weak=False)
    signals.task_prerun.connect(_connections_unusable_close, weak=False)
    signals.task_postrun.connect(_connections_unusable_close, weak=False)


def _connections_unusable_close(**kwargs: Any) -> None:
    """Around each task, what Django does around each request: close the database connections
    that failed (health check), were left outside autocommit, or are older than CONN_MAX_AGE.

    With ``CELERY_DB_REUSE_MAX`` set, Celery keeps a task's connections for the next one; this
    keeps a broken one (a partition, a terminated backend) from being handed on.
    """
    from django.db import close_old_connections

    close_old_connections()


def _relay_through_pooler() -> list[str]:
    """The relay loop's databases that lead to a transaction pooler: the loop cannot work there.

    Its leadership is a session advisory lock and it LISTENs; through a transaction pooler both
    stay behind on a shared server connection when the loop's session ends, and no loop leads
    again. Django's documented sign of a transaction pooler is ``DISABLE_SERVER_SIDE_CURSORS``.
    """
    from django.db import connections

    from reliability.conf import reliability_databases, settings

    if not settings.RELIABILITY_RELAY_LOOP:
        return []
    return [
        f"database {alias!r} leads to a transaction pooler (DISABLE_SERVER_SIDE_CURSORS), but the "
        "relay loop needs a session of its own: connect workers to PostgreSQL directly, or set "
        "RELIABILITY_RELAY_LOOP=false"
        for alias in reliability_databases()
        if connections[alias].settings_dict.get("DISABLE_SERVER_SIDE_CURSORS")
    ]


def _configuration_refuse_unsafe(**kwargs: Any) -> None:
    """A worker applies and relays messages: with an unsafe configuration it must not start.

    Celery's Django fixup has set Django up by now (it connects to ``worker_init`` first).
    SystemExit, because Celery logs and swallows any Exception a signal receiver raises.
    """
    from reliability.checks import reliability_errors

    errors = [*reliability_errors(), *_relay_through_pooler()]
    if errors:
        raise SystemExit(
            "reliability: this configuration is unsafe, the worker will not start:\n"
            + "\n".join(f"  {error}" for error in errors)
        )
