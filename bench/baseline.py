"""The benchmark's baseline: plain at-least-once Celery, no outbox, no message log, no confirms.

A separate Celery app on the same Django settings, so it gets the same serializer,
``acks_late``, prefetch and quorum-queue detection as the pipeline, but it only
knows one durable quorum queue (``bench-baseline``) and publishes without
publisher confirms. Start its workers with::

    PYTHONPATH=. celery -A bench.baseline worker -Q bench-baseline -c 2

The task is one conditional ``UPDATE`` per message, in autocommit.
"""

import os

from celery import Celery
from django.db import connections

from reliability.conf import settings
from reliability.produce.topology import quorum_queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

QUEUE = "bench-baseline"
TASK = "bench.baseline.deduct"

# Not the current app: the bench process also runs the pipeline's publisher, which
# uses ``current_app`` and must keep finding the project's app.
app = Celery("baseline", set_as_current=False)
app.config_from_object("django.conf:settings", namespace="CELERY")
OVERRIDES = {
    "task_queues": [
        quorum_queue(
            QUEUE,
            dead_letter_exchange=settings.RELIABILITY_DEAD_LETTER_EXCHANGE,
            delivery_limit=settings.RELIABILITY_DELIVERY_LIMIT,
        )
    ],
    "task_default_queue": QUEUE,
    "task_default_exchange": QUEUE,
    "task_default_routing_key": QUEUE,
    # Plain at-least-once publishing: no publisher confirms.
    "broker_transport_options": {},
    "beat_schedule": {},
}
# With a namespace, Celery looks ``CELERY_<KEY>`` up before ``<key>`` in every layer,
# so an override must use the namespaced name to beat the Django setting.
app.conf.update({f"CELERY_{key.upper()}": value for key, value in OVERRIDES.items()})


@app.task(name=TASK, acks_late=True, ignore_result=True)
def deduct(account_id: int, beans: int) -> int:
    """Deduct ``beans`` from the account if it has them; return the rows updated (0 or 1)."""
    # The bean service's database (the default one unless BEANS_DATABASE_URL splits them).
    with connections[getattr(settings, "BEANS_DATABASE", "default")].cursor() as cursor:
        cursor.execute(
            "UPDATE beans_account SET balance = balance - %s WHERE id = %s AND balance >= %s",
            [beans, account_id, beans],
        )
        return cursor.rowcount
