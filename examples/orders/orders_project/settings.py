"""Settings of the example: an order service that invoices every order exactly once.

Only what the reliability library needs. Every ``RELIABILITY_*`` setting not set here keeps its
default (``reliability/conf.py`` lists them all, with what each means), and ``python manage.py
check`` runs the rules that tie them together; a worker runs them too and refuses to start when
one fails. From the environment: ``DATABASE_URL`` (PostgreSQL), ``CELERY_BROKER_URL``
(RabbitMQ) and ``RELIABILITY_SIGNING_KEYS``.
"""

import os

import dj_database_url

from reliability import beat_schedule, quorum_queue

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "insecure-example-key-never-use-in-production")
ALLOWED_HOSTS = ["localhost", "127.0.0.1"]
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "reliability",  # the outbox, the message log, the stream positions, the dead letters
    "orders",
    "invoices",
]

# PostgreSQL only: the library relies on its locks, LISTEN/NOTIFY and ON CONFLICT.
DATABASE_URL = os.environ.get("DATABASE_URL", "postgres://127.0.0.1:5432/orders")
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60)}

# Every message is signed (HMAC-SHA256) and verified before it is applied. The one setting the
# library requires: "key_id:secret,key_id:secret", secrets of 32+ bytes; the first key signs.
RELIABILITY_SIGNING_KEYS = {
    key_id.strip(): secret
    for key_id, _, secret in (
        item.partition(":") for item in os.environ.get("RELIABILITY_SIGNING_KEYS", "").split(",")
    )
    if key_id.strip()
}

# --- Celery
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

# Every queue a durable quorum queue whose rejected or undeliverable messages go to the
# library's dead-letter exchange ("dead-letters", the default of RELIABILITY_DEAD_LETTER_EXCHANGE)
# after at most 20 deliveries. replicas=1: this example runs on one RabbitMQ node (3 on a cluster).
CELERY_TASK_QUEUES = [
    quorum_queue(name, dead_letter_exchange="dead-letters", delivery_limit=20, replicas=1)
    for name in ("invoices", "housekeeping")
]
# The library's periodic tasks (relay sweep, reconciler, heartbeats, ...) go to "housekeeping".
CELERY_TASK_DEFAULT_QUEUE = "housekeeping"
CELERY_TASK_DEFAULT_EXCHANGE = "housekeeping"
CELERY_TASK_DEFAULT_ROUTING_KEY = "housekeeping"
# A task sent to a queue nobody declared is a bug, not a reason to invent a queue.
CELERY_TASK_CREATE_MISSING_QUEUES = False

# What the exactly-once guarantee rests on. Acknowledge a message only after the handler's
# transaction committed, and give it back to the broker when the worker dies first: the copy
# is then recognised by the message log. (The library's tasks set both for themselves too.)
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# A task that fails is rejected, so the broker dead-letters it, never acknowledged away.
CELERY_TASK_ACKS_ON_FAILURE_OR_TIMEOUT = False
# The message log holds each outcome; Celery keeps none.
CELERY_TASK_IGNORE_RESULT = True

# The library's periodic tasks; run `celery -A orders_project beat` next to the workers.
CELERY_BEAT_SCHEDULE = beat_schedule()
