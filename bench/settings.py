"""Settings of the bench's HTTP legs: the project's, plus the alternatives they are measured against.

``DJANGO_SETTINGS_MODULE=bench.settings`` for every process of every HTTP leg (gunicorn, the
workers, beat, the relay) and for the bench database's migrations, so all legs share one
server configuration. ``project.settings`` never installs these apps.
"""

import os

from project.settings import *  # noqa: F403
from project.settings import INSTALLED_APPS as PROJECT_APPS

INSTALLED_APPS = [*PROJECT_APPS, "django_celery_outbox", "bench.alternatives"]
ROOT_URLCONF = "bench.urls"

# django-celery-outbox, as its README says: the OutboxCelery app its relay publishes with.
CELERY_OUTBOX_APP = "bench.alternatives.outbox.app"
# Its StatsD metrics (on by default: UDP to localhost:9125, one packet per message and batch)
# are off: no agent listens here, and each refused packet logs a warning and reopens the socket,
# a cost a deployment with an agent (or with them off) does not pay.
MONITORING_METRICS_ENABLED = False

# Celery's Django fixup closes every database connection before and after each task unless
# CELERY_DB_REUSE_MAX is set (Celery >= 5.6: celery/celery#9824; CONN_MAX_AGE is not consulted),
# so a worker that runs one task per message opens a connection per message. Celery's default
# unless python -m bench.run --celery-db-reuse-max N (which always sets this variable; 0: the default)
# asks otherwise, for every worker of the HTTP legs alike.
if int(os.environ.get("BENCH_CELERY_DB_REUSE_MAX", "0") or 0) > 0:
    CELERY_DB_REUSE_MAX = int(os.environ["BENCH_CELERY_DB_REUSE_MAX"])
