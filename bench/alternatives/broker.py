"""The Celery configuration both alternatives share: what a careful user of plain Celery sets.

Each app reads the project's Django settings (``CELERY_*``, as ``project/celery.py`` and
``bench/baseline.py`` do: the same broker, JSON, heartbeats, prefetch and deadlines as the
exactly-once workers), then has a queue of its own and states the settings that make
plain Celery as safe as it gets, even where the project's already agree:

* ``confirm_publish`` (``broker_transport_options``): a publish returns once the broker
  has the message, so a message the broker lost is an exception, not silence;
* ``task_acks_late`` and ``task_reject_on_worker_lost``: acknowledged after the task ran,
  redelivered when the worker dies;
* a durable **quorum** queue (Raft-replicated on a cluster; persistent messages), bound to
  a topic exchange (Celery's native delayed delivery on quorum queues needs one). No
  dead-letter exchange: most users have none.
"""

from typing import Any

from celery import Celery
from django.conf import settings
from kombu import Exchange, Queue


def quorum_queue(name: str) -> Queue:
    return Queue(
        name,
        Exchange(name, type="topic", durable=True),
        routing_key=name,
        durable=True,
        queue_arguments={"x-queue-type": "quorum"},
    )


def careful_configure(app: Celery, *, queue: str, include: list[str]) -> None:
    """Configure ``app`` from Django settings, with ``queue`` as its only queue."""
    app.config_from_object("django.conf:settings", namespace="CELERY")
    overrides: dict[str, Any] = {
        "task_queues": [quorum_queue(queue)],
        "task_default_queue": queue,
        "task_default_exchange": queue,
        "task_default_exchange_type": "topic",
        "task_default_routing_key": queue,
        "broker_transport_options": {**settings.CELERY_BROKER_TRANSPORT_OPTIONS, "confirm_publish": True},
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "beat_schedule": {},
        "include": include,
    }
    # With a namespace, Celery looks ``CELERY_<KEY>`` up before ``<key>`` in every layer,
    # so an override must use the namespaced name to beat the Django setting.
    app.conf.update({f"CELERY_{key.upper()}": value for key, value in overrides.items()})
