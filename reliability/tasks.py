"""Celery tasks of the reliability app: thin interfaces over the relay, the reconciler, heartbeats, retention, the dead-letter drain and degrade mode."""

from celery import shared_task

from reliability.conf import reliability_databases
from reliability.ops import dead_letters, degrade, queues, reconciler, retention
from reliability.produce import heartbeat, relay


# The frequent housekeeping tasks keep no result (one row a second would pile up);
# the reconciler and retention keep theirs in django-celery-results as an audit trail.
@shared_task(name="reliability.relay_outbox", ignore_result=True, acks_late=False)
def relay_outbox() -> dict[str, int]:
    """Publish due pending outbox rows (the safety net behind the fast path)."""
    return {alias: relay.outbox_relay_batch(using=alias) for alias in reliability_databases()}


@shared_task(name="reliability.reconcile", ignore_result=False, acks_late=False)
def reconcile() -> list[dict[str, object]]:
    """Find gaps and lost tails and publish them again with their original message_id."""
    return [
        {
            "database": run.database,
            "tail_gaps_found": run.tail_gaps_found,
            "republished": run.republished,
            "not_in_outbox": run.not_in_outbox,
            "escalated": run.escalated,
            "gaps_open": run.gaps_open,
        }
        for run in reconciler.reconcile_all()
    ]


@shared_task(name="reliability.stream_heartbeat", acks_late=False)
def stream_heartbeat() -> int:
    """Tell each stream's consumer the producer's high-water mark."""
    return sum(heartbeat.stream_heartbeat_send(using=alias) for alias in reliability_databases())


@shared_task(name="reliability.purge_old_rows", ignore_result=False, acks_late=False)
def purge_old_rows() -> dict[str, dict[str, int]]:
    """Drop outbox and message-log partitions past retention, make the next ones, and delete old
    rows of the small tables in bounded batches.

    Non-critical: the drops and deletes are deferred while the pipeline is degraded (they compete
    for the database); the partitions ahead are made even then, since inserts need them.
    """
    if degrade.pipeline_degraded():
        return {
            alias: retention.retention_partitions_maintain(using=alias, drop=False)
            for alias in reliability_databases()
        }
    return {alias: retention.retention_purge(using=alias) for alias in reliability_databases()}


@shared_task(name="reliability.drain_dead_letters", ignore_result=True, acks_late=False)
def drain_dead_letters() -> int:
    """Record what the broker dead-lettered in the DeadLetter table, then acknowledge it."""
    return dead_letters.dead_letters_drain()


@shared_task(name="reliability.evaluate_pipeline_mode", ignore_result=True, acks_late=False)
def evaluate_pipeline_mode() -> bool:
    """Enter or leave degrade mode from the current lag, then record the queue depths for
    /metrics and the health page (after: a slow broker never delays the mode); return whether degraded."""
    degraded = degrade.pipeline_mode_evaluate().degraded
    queues.queue_depths_record()
    return degraded
