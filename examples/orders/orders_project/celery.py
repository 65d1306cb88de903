"""The Celery application, configured from the Django settings (``CELERY_*``)."""

import os

from celery import Celery

from reliability import worker_steps_install

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orders_project.settings")

app = Celery("orders_project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()  # finds invoices/tasks.py
# The relay loop in every worker; a consumer that dead-letters a body it cannot decode instead
# of acknowledging it away; and a worker that refuses to start when the reliability system
# checks fail (a missing signing key, unsafe retention windows, ...).
worker_steps_install(app)
