"""The django-celery-outbox app (its ``OutboxCelery``, as its README says):
``celery -A bench.alternatives.outbox worker``, and ``manage.py celery_outbox_relay`` publishes
(``CELERY_OUTBOX_APP`` in ``bench.settings`` names this app).

``OutboxCelery.send_task`` (so ``task.delay``) writes a ``celery_outbox`` row in the caller's
transaction instead of publishing; the relay sends it with plain ``Celery.send_task`` (with
this app's publisher confirms) and deletes it.
"""

import os

from django_celery_outbox import OutboxCelery

from .broker import careful_configure

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")

QUEUE = "bench-outbox"

app = OutboxCelery("bench_outbox", set_as_current=False)
careful_configure(app, queue=QUEUE, include=["bench.alternatives.tasks"])
