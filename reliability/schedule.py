"""The periodic tasks the library needs, as a Celery beat schedule (no Django imports: a settings
module calls it).

    CELERY_BEAT_SCHEDULE = {**beat_schedule(), **your_own_entries}
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any


def beat_schedule(
    *,
    relay_s: float = 1.0,
    reconcile_s: float = 10.0,
    heartbeat_s: float = 5.0,
    dead_letters_s: float = 5.0,
    degrade_s: float = 5.0,
    retention_s: float = 600.0,
) -> dict[str, dict[str, Any]]:
    """Return the library's beat entries; each expires before the next run of its kind piles up."""

    def entry(task: str, every_s: float, expires_s: float) -> dict[str, Any]:
        return {"task": task, "schedule": timedelta(seconds=every_s), "options": {"expires": expires_s}}

    return {
        # Safety net behind the after-commit fast path and the relay loop: publish what is pending.
        "relay-outbox": entry("reliability.relay_outbox", relay_s, 10),
        # Finds gaps and lost tails from the consumers' watermarks and re-publishes them.
        "reconcile": entry("reliability.reconcile", reconcile_s, 60),
        # Tells each stream's consumer the producer's high-water mark (lost-tail detection).
        "stream-heartbeat": entry("reliability.stream_heartbeat", heartbeat_s, 30),
        # Records what the broker dead-lettered (reason, headers, body) in the DeadLetter table.
        "drain-dead-letters": entry("reliability.drain_dead_letters", dead_letters_s, 30),
        # Enters or leaves degrade mode from the current lag (non-critical work is shed), then
        # records the queue depths, so /metrics and the health page never open a broker connection.
        "evaluate-pipeline-mode": entry("reliability.evaluate_pipeline_mode", degrade_s, 30),
        # Drops outbox and message-log partitions past retention and makes the next ones; deletes
        # old gap rows (and default-partition rows) in bounded batches.
        "retention": entry("reliability.purge_old_rows", retention_s, 600),
    }
