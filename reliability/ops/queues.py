"""Queue depths, read from the broker by beat and recorded, so that ``/metrics`` and the health page
read a few rows instead of opening a broker connection on every request.

``queue_depths_record`` runs with the degrade evaluation (``reliability.evaluate_pipeline_mode``,
every few seconds); ``reliability.selectors.queue_depths_recorded`` reads what it recorded and
shows a reading older than ``RELIABILITY_QUEUE_DEPTH_MAX_AGE_S`` as unknown. Readiness
(``/readyz``) and the reconciler still ask the broker itself.
"""

from django.db import transaction
from django.utils import timezone

from reliability.models import QueueDepth
from reliability.selectors import queue_depths, queue_depths_database


def queue_depths_record() -> dict[str, int | None]:
    """Read every project queue's depth from the broker and record it; return what was read.

    A queue the broker did not report (missing, or the broker unreachable) is recorded as
    unknown, at this time; rows of queues no longer configured are removed.
    """
    depths = queue_depths()
    now = timezone.now()
    using = queue_depths_database()
    with transaction.atomic(using=using):
        QueueDepth.objects.using(using).exclude(queue__in=list(depths)).delete()
        QueueDepth.objects.using(using).bulk_create(
            [QueueDepth(queue=name, messages=messages, observed_at=now) for name, messages in depths.items()],
            update_conflicts=True,
            unique_fields=["queue"],
            update_fields=["messages", "observed_at"],
        )
    return depths
