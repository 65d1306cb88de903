"""Exactly-once effects for Django + Celery: a transactional outbox with a confirmed relay,
deduplicating consumers (late acks and a message-log row committed with the effect), gap-free
streams with a reconciler, and dead letters.

This package is the public API: import from ``reliability``, not from its modules, which may
move. Names are loaded lazily, on first use, so importing ``reliability`` (in a settings module,
say) touches neither Django nor Celery before they are set up.

    from reliability import Message, exactly_once_task, outbox_enqueue

    @exactly_once_task(name="invoices.issue", queue="invoices")
    def invoice_issue(message: Message) -> str:
        ...  # runs once per message, in the transaction that logs the message as applied
        return "issued"

    with transaction.atomic():
        order = Order.objects.create(...)
        outbox_enqueue(
            task_name="invoices.issue", queue="invoices", stream=f"orders.{order.pk % 8}",
            payload={"order_id": order.pk},
        )
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> the module (relative to this package) that defines it
_EXPORTS = {
    # producing: write the message in your transaction; the relay publishes it, confirmed
    "outbox_enqueue": "produce.outbox",
    "outbox_enqueue_many": "produce.outbox",
    "outbox_enqueue_with_row": "produce.outbox",
    "message_id_new": "ids",
    # consuming: a task that applies each message once
    "exactly_once_task": "consume.task",
    "Message": "envelope",
    # exceptions
    "ReliabilityError": "exceptions",
    "PoisonMessage": "exceptions",
    "OutboxUsageError": "exceptions",
    "InvalidEnvelope": "exceptions",
    "PublishError": "exceptions",
    "BrokerUnavailable": "exceptions",
    "PublishNacked": "exceptions",
    "PublishReturned": "exceptions",
    "PublishTimeout": "exceptions",
    "ClockMovedBackwards": "ids",
    "WorkerIdUnavailable": "ids",
    # status, degrade mode and reconciliation
    "pipeline_health": "ops.health",
    "stream_health": "ops.health",
    "PipelineMode": "models",
    "Outcome": "models",
    "pipeline_mode_current": "ops.degrade",
    "non_critical": "ops.degrade",
    "reconcile_all": "ops.reconciler",
    # wiring: queue declarations, the Celery worker step, the admin base class, the views
    "quorum_queue": "produce.topology",
    "beat_schedule": "schedule",
    "worker_steps_install": "worker",
    "ReadOnlyModelAdmin": "admin",
    "metrics": "views",
    "pipeline_health_page": "views",
    "healthz": "views",
    "readyz": "views",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'reliability' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value  # the next lookup is a plain module attribute
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ loads these
    from reliability.admin import ReadOnlyModelAdmin
    from reliability.consume.task import exactly_once_task
    from reliability.envelope import Message
    from reliability.exceptions import (
        BrokerUnavailable,
        InvalidEnvelope,
        OutboxUsageError,
        PoisonMessage,
        PublishError,
        PublishNacked,
        PublishReturned,
        PublishTimeout,
        ReliabilityError,
    )
    from reliability.ids import ClockMovedBackwards, WorkerIdUnavailable, message_id_new
    from reliability.models import Outcome, PipelineMode
    from reliability.ops.degrade import non_critical, pipeline_mode_current
    from reliability.ops.health import pipeline_health, stream_health
    from reliability.ops.reconciler import reconcile_all
    from reliability.produce.outbox import outbox_enqueue, outbox_enqueue_many, outbox_enqueue_with_row
    from reliability.produce.topology import quorum_queue
    from reliability.schedule import beat_schedule
    from reliability.views import healthz, metrics, pipeline_health_page, readyz
    from reliability.worker import worker_steps_install
