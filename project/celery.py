"""The Celery application: configured from Django settings (``CELERY_*``)."""

import os

from celery import Celery

from reliability import worker_steps_install

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

app = Celery("project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
worker_steps_install(app)
