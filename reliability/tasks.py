"""Celery tasks of the reliability app: thin interfaces over services."""

from celery import shared_task

from . import services


@shared_task(name="reliability.relay_outbox", ignore_result=False, acks_late=False)
def relay_outbox(using: str = "default") -> int:
    """Publish due pending outbox rows (the safety net behind the fast path)."""
    return services.outbox_relay_batch(using=using)
