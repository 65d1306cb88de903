"""The best-practice Celery app: ``celery -A bench.alternatives.best_practice worker``."""

import os

from celery import Celery

from .broker import careful_configure

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")

QUEUE = "bench-best-practice"

# Not the current app: gunicorn also runs the project's publisher, which uses ``current_app``.
app = Celery("bench_best_practice", set_as_current=False)
careful_configure(app, queue=QUEUE, include=["bench.alternatives.tasks"])
