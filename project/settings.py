"""Django settings: the one module that reads the environment.

Every value has a default that works on a developer machine (services on
127.0.0.1, see README) and none of them is a production secret. Production sets
``DJANGO_ENV=production`` and must then provide ``DJANGO_SECRET_KEY``,
``DJANGO_ALLOWED_HOSTS``, ``DATABASE_URL`` and ``CELERY_BROKER_URL`` (not guest).
"""

import os
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from project.environment import DEFAULT_BROKER_URL, DEFAULT_DATABASE_URL
from reliability import quorum_queue
from reliability.retention_rules import retention_horizons_check

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}") from exc


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be a number, got {raw!r}") from exc


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in {"1", "true", "yes", "on"}:
        return True
    if raw.lower() in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, got {raw!r}")


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in env_str(name, default).split(",") if item.strip()]


def database_from_url(url: str, *, test_name: str = "") -> dict[str, Any]:
    """Turn a PostgreSQL URL into a DATABASES entry (dj-database-url), with the session deadlines.

    Query parameters reach the driver as they are (``?sslmode=require&connect_timeout=3``,
    ``?host=/var/run/postgresql`` for the socket); they override the deadlines' defaults,
    and ``-c name=value`` items of ``options`` are merged with ours.
    """
    try:
        config: dict[str, Any] = dict(
            dj_database_url.parse(
                url, conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60), conn_health_checks=True
            )
        )
    except ValueError as exc:
        raise ImproperlyConfigured(f"cannot read the database URL {url!r}: {exc}") from exc
    if config.get("ENGINE") != "django.db.backends.postgresql":
        raise ImproperlyConfigured(f"only PostgreSQL database URLs are supported, got {url!r}")
    # Persistent connections (CONN_MAX_AGE above): workers and the relay run many short transactions.
    config["OPTIONS"] = database_session_options(dict(config.get("OPTIONS") or {}))
    config["TEST"] = {"NAME": test_name or None}
    return config


def _server_options(text: str) -> dict[str, str]:
    """``"-c a=1 -c b=2"`` (libpq ``options``) as ``{"a": "1", "b": "2"}``."""
    parsed, tokens = {}, text.replace("-c ", "-c").split()
    for token in tokens:
        name, _, value = token.removeprefix("-c").partition("=")
        if name:
            parsed[name] = value
    return parsed


def database_session_options(given: dict[str, Any]) -> dict[str, Any]:
    """Deadlines on every database session, both ends of it (README, "Partitions and timeouts").

    The client (libpq) gives up on a server that went silent: connect timeout, TCP
    keepalives, and ``tcp_user_timeout`` for data the server never acknowledges. The
    server gives up on a client that went silent mid-transaction: after
    ``idle_in_transaction_session_timeout`` it ends the session and its row locks
    (accounts, stream watermarks) are released, so other workers carry on; its own
    keepalives find a vanished client that is not in a transaction. ``given`` (from the
    URL) wins over these defaults.
    """
    idle = env_int("DATABASE_KEEPALIVES_IDLE_S", 5)
    interval = env_int("DATABASE_KEEPALIVES_INTERVAL_S", 2)
    count = env_int("DATABASE_KEEPALIVES_COUNT", 3)
    user_timeout_ms = env_int("DATABASE_TCP_USER_TIMEOUT_MS", 15_000)
    in_transaction_s = env_float("DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_S", 30.0)
    server: dict[str, object] = {
        "idle_in_transaction_session_timeout": f"{int(in_transaction_s * 1000)}ms",
        "tcp_keepalives_idle": idle,
        "tcp_keepalives_interval": interval,
        "tcp_keepalives_count": count,
        "tcp_user_timeout": user_timeout_ms,
    }
    server.update(_server_options(str(given.pop("options", ""))))
    return {
        "connect_timeout": env_int("DATABASE_CONNECT_TIMEOUT_S", 5),
        "keepalives": 1,
        "keepalives_idle": idle,
        "keepalives_interval": interval,
        "keepalives_count": count,
        "tcp_user_timeout": user_timeout_ms,
        **given,
        "options": " ".join(f"-c {name}={value}" for name, value in server.items()),
    }


ENVIRONMENT = env_str("DJANGO_ENV", "development")
if ENVIRONMENT not in {"development", "test", "production"}:
    raise ImproperlyConfigured("DJANGO_ENV must be development, test or production")
IS_PRODUCTION = ENVIRONMENT == "production"

DEBUG = env_bool("DJANGO_DEBUG", False)
if IS_PRODUCTION:
    # Secrets (and hosts) come from the environment only: no development default stands in.
    _missing = [
        name
        for name in ("DJANGO_SECRET_KEY", "DJANGO_ALLOWED_HOSTS", "DATABASE_URL", "CELERY_BROKER_URL")
        if not os.environ.get(name)
    ]
    if _missing:
        raise ImproperlyConfigured(f"DJANGO_ENV=production needs {', '.join(_missing)} in the environment")
    if DEBUG:
        raise ImproperlyConfigured("DJANGO_DEBUG cannot be on when DJANGO_ENV=production")
    # No user in the URL means guest to kombu. Per-role users: scripts/rabbitmq-users (README).
    _broker_users = {urlsplit(url).username for url in os.environ["CELERY_BROKER_URL"].split(";")}
    if _broker_users & {None, "", "guest"}:
        raise ImproperlyConfigured("CELERY_BROKER_URL must name a broker user of its own, not guest")
SECRET_KEY = env_str("DJANGO_SECRET_KEY", "insecure-development-key-never-use-in-production")
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver")
if IS_PRODUCTION and (not ALLOWED_HOSTS or "*" in ALLOWED_HOSTS):
    raise ImproperlyConfigured("DJANGO_ALLOWED_HOSTS must name the hosts served in production, not '*'")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_celery_results",
    "reliability",
    "beans",
    "trades",
    "project",  # pipeline-wide commands: verify, pipeline_status, repartition
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "project.urls"
WSGI_APPLICATION = "project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# No user or password by default: libpq connects as this OS user, with the password that
# scripts/ensure-services keeps in ~/.pgpass (project/environment.py says why).
DATABASE_URL = env_str("DATABASE_URL", DEFAULT_DATABASE_URL)
DATABASES = {
    "default": database_from_url(
        DATABASE_URL,
        test_name=env_str("DATABASE_TEST_NAME", ""),
    ),
}
# The bean service in a database of its own (optional): its accounts, ledger, outbox
# and message log live there, so "one transaction" still holds on each side.
BEANS_DATABASE_URL = env_str("BEANS_DATABASE_URL", "")
if BEANS_DATABASE_URL:
    DATABASES["beans"] = database_from_url(
        BEANS_DATABASE_URL, test_name=env_str("BEANS_DATABASE_TEST_NAME", "")
    )
BEANS_DATABASE = "beans" if BEANS_DATABASE_URL else "default"
DATABASE_ROUTERS = ["project.routers.ServiceDatabaseRouter"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / ".run" / "static"

# Where the admin is served: a path of your own makes it harder to find (e.g. "ops-7f3a/").
ADMIN_URL = env_str("DJANGO_ADMIN_URL", "admin/")
if not ADMIN_URL.endswith("/") or ADMIN_URL.startswith("/"):
    raise ImproperlyConfigured(f"DJANGO_ADMIN_URL must look like 'admin/' (no leading /), got {ADMIN_URL!r}")

# GET /metrics: with a token, scrapers must send "Authorization: Bearer <token>" (401 otherwise);
# without one, only loopback clients (127.0.0.0/8, ::1) are answered (403 otherwise). Behind a
# reverse proxy on the same host every request looks local: set a token there.
METRICS_TOKEN = env_str("METRICS_TOKEN", "")
# Collectors of domain figures for /metrics: dotted paths to classes with collect().
METRICS_COLLECTORS = ["trades.metrics.TradesCollector"]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
}

# --- Celery -----------------------------------------------------------------
# Each setting links the line of the Celery docs that explains it:
# https://docs.celeryq.dev/en/stable/userguide/configuration.html

CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", DEFAULT_BROKER_URL)
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#broker-connection-retry-on-startup
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A channel the broker closes (a delivery that outlived consumer_timeout: PRECONDITION_FAILED)
# restarts the consumer instead of ending the worker; the delivery is requeued by the broker.
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#broker-channel-error-retry
CELERY_BROKER_CHANNEL_ERROR_RETRY = True
# Deadlines on every broker connection (README, "Partitions and timeouts"). AMQP heartbeats
# let both ends notice a silent peer: the broker closes a worker's connection after two
# missed heartbeats and hands its unacknowledged messages to other consumers.
RELIABILITY_BROKER_HEARTBEAT_S = env_float("RELIABILITY_BROKER_HEARTBEAT_S", 10.0)
RELIABILITY_CONNECT_TIMEOUT_S = env_float("RELIABILITY_CONNECT_TIMEOUT_S", 2.0)
# Longest a blocking socket read or write may wait (SO_RCVTIMEO / SO_SNDTIMEO): a reply the
# broker never sends (Declare-Ok, Close-Ok, a confirm Celery waits on) ends in an error.
RELIABILITY_BROKER_IO_TIMEOUT_S = env_float("RELIABILITY_BROKER_IO_TIMEOUT_S", 10.0)
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#broker-heartbeat
CELERY_BROKER_HEARTBEAT = RELIABILITY_BROKER_HEARTBEAT_S
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#broker-connection-timeout
CELERY_BROKER_CONNECTION_TIMEOUT = RELIABILITY_CONNECT_TIMEOUT_S
# Every publish Celery itself makes (beat, events) waits for the broker's confirm, and no
# blocking socket operation on any of its connections waits longer than the I/O timeout.
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#broker-transport-options
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "confirm_publish": True,
    # Celery negotiates heartbeats on the consumer's connection only (broker_heartbeat); this
    # asks for them on its publishing connections too (beat, events), so the broker drops
    # those of a process that went silent. They publish every second or two while healthy.
    "heartbeat": RELIABILITY_BROKER_HEARTBEAT_S,
    "read_timeout": RELIABILITY_BROKER_IO_TIMEOUT_S,
    "write_timeout": RELIABILITY_BROKER_IO_TIMEOUT_S,
}

# JSON only, never pickle.
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#accept-content
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_RESULT_ACCEPT_CONTENT = ["json"]
CELERY_EVENT_SERIALIZER = "json"

# https://docs.celeryq.dev/en/stable/userguide/configuration.html#result-backend
CELERY_RESULT_BACKEND = "django-db"
CELERY_RESULT_EXTENDED = True
# Consumers store their outcome in the message log; results only where useful.
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#task-ignore-result
CELERY_TASK_IGNORE_RESULT = True

# Ack after the handler's transaction committed; a killed worker child means redelivery.
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#task-acks-late
CELERY_TASK_ACKS_LATE = True
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#task-reject-on-worker-lost
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# A task that fails (or whose failure could not even be recorded) is rejected, so the
# broker dead-letters it instead of the worker acknowledging it away.
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#task-acks-on-failure-or-timeout
CELERY_TASK_ACKS_ON_FAILURE_OR_TIMEOUT = False
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#worker-prefetch-multiplier
CELERY_WORKER_PREFETCH_MULTIPLIER = env_int("CELERY_WORKER_PREFETCH_MULTIPLIER", 4)
# Quorum queues do not support global QoS; Celery switches to per-consumer QoS.
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#worker-detect-quorum-queues
CELERY_WORKER_DETECT_QUORUM_QUEUES = True
# Countdowns and ETAs on quorum queues need Celery's native delayed delivery: 28 more quorum
# queues and exchanges per vhost. Nothing here uses a countdown, so the worker does not
# declare them (reliability.worker); a countdown then fails loudly (no such exchange).
# Turn it on for a project that does use countdowns.
RELIABILITY_NATIVE_DELAYED_DELIVERY = env_bool("RELIABILITY_NATIVE_DELAYED_DELIVERY", False)
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#broker-native-delayed-delivery-queue-type
CELERY_BROKER_NATIVE_DELAYED_DELIVERY_QUEUE_TYPE = "quorum"
# A task routed to a queue nobody declared is a bug, not a reason to invent a queue.
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#task-create-missing-queues
CELERY_TASK_CREATE_MISSING_QUEUES = False
# A handler that hangs is stopped (its transaction rolls back, the message is requeued)
# long before RabbitMQ's consumer_timeout (30 min by default) gives up on the delivery.
# Keep consumer_timeout > (prefetch_multiplier + 1) x task_time_limit: a prefetched
# message waits in the worker, and its clock runs from delivery. See README.
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#task-time-limit
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", 300)
CELERY_TASK_SOFT_TIME_LIMIT = env_int("CELERY_TASK_SOFT_TIME_LIMIT", 240)
# When the broker connection drops, the unacked messages come back anyway: stop working on them.
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#worker-cancel-long-running-tasks-on-connection-loss
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True
# Undecodable messages are rejected to the dead-letter exchange, not acknowledged away.
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#worker-consumer
CELERY_WORKER_CONSUMER = "reliability.worker:DeadLetteringConsumer"
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#worker-send-task-events
CELERY_WORKER_SEND_TASK_EVENTS = env_bool("CELERY_WORKER_SEND_TASK_EVENTS", False)

RELIABILITY_DEAD_LETTER_EXCHANGE = "dead-letters"
RELIABILITY_DEAD_LETTER_QUEUE = "dead-letters"
# How many times the broker delivers a message before dead-lettering it (quorum queues).
RELIABILITY_DELIVERY_LIMIT = env_int("RELIABILITY_DELIVERY_LIMIT", 20)
# Replicas of every quorum queue on a cluster (a majority must store a message before
# the broker confirms it); a single node holds one.
RELIABILITY_QUORUM_REPLICAS = env_int("RELIABILITY_QUORUM_REPLICAS", 3)
# Longest a queue may grow; beyond it the broker refuses publishes (reject-publish) and the
# outbox holds the rest: back-pressure, not loss. 0 = unbounded. A queue argument: changing
# it means re-declaring the queues (see README, "Scaling and back-pressure").
RELIABILITY_QUEUE_MAX_LENGTH = env_int("RELIABILITY_QUEUE_MAX_LENGTH", 100_000)

# Deductions are sequenced per stream; an account always maps to the same stream.
TRADES_DEDUCTION_STREAMS = env_int("TRADES_DEDUCTION_STREAMS", 8)
# The bean service's queue, split into partitions: each its own quorum queue (own bound, leader
# and consumers); a stream always goes to the same partition. Changing either number is a
# drain-and-switch (README, "Scaling and back-pressure"; manage.py repartition).
TRADES_QUEUE_PARTITIONS = env_int("TRADES_QUEUE_PARTITIONS", 1)
if not 1 <= TRADES_QUEUE_PARTITIONS <= TRADES_DEDUCTION_STREAMS:
    raise ImproperlyConfigured("TRADES_QUEUE_PARTITIONS must be between 1 and TRADES_DEDUCTION_STREAMS")
BEANS_QUEUES = (
    ["beans"] if TRADES_QUEUE_PARTITIONS == 1 else [f"beans.{p}" for p in range(TRADES_QUEUE_PARTITIONS)]
)

# https://docs.celeryq.dev/en/stable/userguide/configuration.html#task-queues
CELERY_TASK_QUEUES = [
    quorum_queue(
        name,
        dead_letter_exchange=RELIABILITY_DEAD_LETTER_EXCHANGE,
        delivery_limit=RELIABILITY_DELIVERY_LIMIT,
        replicas=RELIABILITY_QUORUM_REPLICAS,
        max_length=RELIABILITY_QUEUE_MAX_LENGTH or None,
    )
    for name in (*BEANS_QUEUES, "trades", "housekeeping")
]
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#task-default-queue
CELERY_TASK_DEFAULT_QUEUE = "housekeeping"
CELERY_TASK_DEFAULT_EXCHANGE = "housekeeping"
CELERY_TASK_DEFAULT_ROUTING_KEY = "housekeeping"

# Periodic tasks, declared in one place.
# https://docs.celeryq.dev/en/stable/userguide/periodic-tasks.html
CELERY_BEAT_SCHEDULE = {
    # Safety net behind the after-commit fast path: publish whatever is still pending.
    "relay-outbox": {
        "task": "reliability.relay_outbox",
        "schedule": timedelta(seconds=env_float("RELIABILITY_RELAY_INTERVAL_S", 1.0)),
        "options": {"expires": 10},
    },
    # Finds gaps and lost tails from the consumers' watermarks and re-publishes them.
    "reconcile": {
        "task": "reliability.reconcile",
        "schedule": timedelta(seconds=env_float("RELIABILITY_RECONCILE_INTERVAL_S", 10.0)),
        "options": {"expires": 60},
    },
    # Tells each stream's consumer the producer's high-water mark (lost-tail detection).
    "stream-heartbeat": {
        "task": "reliability.stream_heartbeat",
        "schedule": timedelta(seconds=env_float("RELIABILITY_HEARTBEAT_INTERVAL_S", 5.0)),
        "options": {"expires": 30},
    },
    # Records what the broker dead-lettered (with reason, headers, body) in the DeadLetter table.
    "drain-dead-letters": {
        "task": "reliability.drain_dead_letters",
        "schedule": timedelta(seconds=env_float("RELIABILITY_DEAD_LETTER_DRAIN_INTERVAL_S", 5.0)),
        "options": {"expires": 30},
    },
    # Enters or leaves degrade mode from the current lag (non-critical work is shed).
    "evaluate-pipeline-mode": {
        "task": "reliability.evaluate_pipeline_mode",
        "schedule": timedelta(seconds=env_float("RELIABILITY_DEGRADE_INTERVAL_S", 5.0)),
        "options": {"expires": 30},
    },
    # Deletes outbox, message-log and gap rows past retention, in bounded batches.
    "retention": {
        "task": "reliability.purge_old_rows",
        "schedule": timedelta(minutes=10),
        "options": {"expires": 600},
    },
}

# --- Reliability (outbox, relay, consumer middleware) ----------------------

# Publish right after commit (the sweep is the safety net), unless a relay loop runs.
# Off: the relay loop and the sweep do it all.
RELIABILITY_RELAY_FAST_PATH = env_bool("RELIABILITY_RELAY_FAST_PATH", True)
# Every worker runs a relay loop (one per database is active): woken by the commit,
# it lingers this long, then packs what is pending into envelopes of many messages.
RELIABILITY_RELAY_LOOP = env_bool("RELIABILITY_RELAY_LOOP", True)
RELIABILITY_RELAY_LINGER_MS = env_float("RELIABILITY_RELAY_LINGER_MS", 5.0)
# Rows published per relay pass (bounded, locked, ordered by id).
RELIABILITY_RELAY_BATCH_SIZE = env_int("RELIABILITY_RELAY_BATCH_SIZE", 500)
# Messages per envelope (one task message, one consumer transaction), and envelopes
# in flight at once before the relay waits for their confirms.
RELIABILITY_ENVELOPE_MAX_MESSAGES = env_int("RELIABILITY_ENVELOPE_MAX_MESSAGES", 100)
RELIABILITY_RELAY_WINDOW = env_int("RELIABILITY_RELAY_WINDOW", 32)
# Declare the broker topology on every new publisher connection. Off for a process whose
# broker user may only publish (scripts/rabbitmq-users, producer role): the admin declares it
# once (manage.py broker_setup); a publish to a queue that is missing is returned, and waits.
RELIABILITY_DECLARE_TOPOLOGY = env_bool("RELIABILITY_DECLARE_TOPOLOGY", True)

# Message signing (reliability/signing.py): "key_id:secret,key_id:secret" - every key is
# accepted on consumption; RELIABILITY_SIGNING_KEY_ID (default: the first) signs. Rotate by
# adding a key everywhere, switching the active id, and dropping the old key later.
_DEVELOPMENT_SIGNING_KEYS = "dev:development-signing-key-never-use-in-production"
RELIABILITY_SIGNING_KEYS = {
    key_id.strip(): secret.encode()
    for key_id, _, secret in (
        item.partition(":") for item in env_list("RELIABILITY_SIGNING_KEYS", _DEVELOPMENT_SIGNING_KEYS)
    )
}
RELIABILITY_SIGNING_KEY_ID = env_str("RELIABILITY_SIGNING_KEY_ID", next(iter(RELIABILITY_SIGNING_KEYS), ""))
if any(not key_id or len(secret) < 32 for key_id, secret in RELIABILITY_SIGNING_KEYS.items()):
    raise ImproperlyConfigured(
        "RELIABILITY_SIGNING_KEYS: each entry is key_id:secret with a secret of 32+ bytes"
    )
if RELIABILITY_SIGNING_KEY_ID not in RELIABILITY_SIGNING_KEYS:
    raise ImproperlyConfigured(
        f"RELIABILITY_SIGNING_KEY_ID {RELIABILITY_SIGNING_KEY_ID!r} is not in RELIABILITY_SIGNING_KEYS"
    )
# An envelope names the task it is signed for (README, "Message authenticity"). Envelopes
# signed before that (no "task") are accepted while this is on: the upgrade's transition,
# while older producers' messages may still be in flight. Turn it off once they drained.
RELIABILITY_ACCEPT_UNADDRESSED_ENVELOPES = env_bool("RELIABILITY_ACCEPT_UNADDRESSED_ENVELOPES", True)
if IS_PRODUCTION and ("RELIABILITY_SIGNING_KEYS" not in os.environ or "dev" in RELIABILITY_SIGNING_KEYS):
    raise ImproperlyConfigured(
        "DJANGO_ENV=production needs RELIABILITY_SIGNING_KEYS of its own (not the dev key)"
    )
# The sweep leaves a fresh row this long to the after-commit fast path.
RELIABILITY_RELAY_GRACE_S = env_float("RELIABILITY_RELAY_GRACE_S", 2.0)
# Longest wait for a publisher confirm before the publish counts as failed.
RELIABILITY_CONFIRM_TIMEOUT_S = env_float("RELIABILITY_CONFIRM_TIMEOUT_S", 5.0)
# A relay claims the rows it is about to publish for this long (committed, no lock held
# while it waits on the broker); a claim that expires is taken over by any relay or the
# sweep. A relay stops publishing its claim when less than a confirm timeout of it is left.
RELIABILITY_RELAY_CLAIM_S = env_float("RELIABILITY_RELAY_CLAIM_S", 20.0)
# The active relay loop hands its leadership to another worker after failing to publish
# for this long while rows wait, and stands back for as long again.
RELIABILITY_RELAY_LEADER_FAIL_S = env_float("RELIABILITY_RELAY_LEADER_FAIL_S", 10.0)
if RELIABILITY_RELAY_CLAIM_S < 2 * (RELIABILITY_CONNECT_TIMEOUT_S + RELIABILITY_CONFIRM_TIMEOUT_S):
    raise ImproperlyConfigured(
        "RELIABILITY_RELAY_CLAIM_S must be at least twice RELIABILITY_CONNECT_TIMEOUT_S + "
        "RELIABILITY_CONFIRM_TIMEOUT_S: a claim must outlast the publish window it covers"
    )
# Backoff after a failed publish: min(base * 2**attempts, max), in seconds.
RELIABILITY_RELAY_BACKOFF_BASE_S = env_float("RELIABILITY_RELAY_BACKOFF_BASE_S", 0.5)
RELIABILITY_RELAY_BACKOFF_MAX_S = env_float("RELIABILITY_RELAY_BACKOFF_MAX_S", 30.0)
# A failed delivery is requeued after min(0.1 s x 2^deliveries, this); the queue's
# delivery limit (RELIABILITY_DELIVERY_LIMIT) bounds the loop and dead-letters the rest.
RELIABILITY_REQUEUE_PAUSE_MAX_S = env_float("RELIABILITY_REQUEUE_PAUSE_MAX_S", 5.0)

# Reconciler: re-publish what the consumer never saw, once it is older than the grace.
RELIABILITY_RECONCILE_GRACE_S = env_float("RELIABILITY_RECONCILE_GRACE_S", 30.0)
RELIABILITY_RECONCILE_MAX_ATTEMPTS = env_int("RELIABILITY_RECONCILE_MAX_ATTEMPTS", 5)
RELIABILITY_RECONCILE_BATCH_SIZE = env_int("RELIABILITY_RECONCILE_BATCH_SIZE", 500)
RELIABILITY_RECONCILE_INTERVAL_S = env_float("RELIABILITY_RECONCILE_INTERVAL_S", 10.0)
RELIABILITY_HEARTBEAT_INTERVAL_S = env_float("RELIABILITY_HEARTBEAT_INTERVAL_S", 5.0)

# Retention. The dedupe window (how long message-log rows are kept) must outlast
# every way a message can come back; settings that break this are refused below.
RELIABILITY_DEDUPE_WINDOW_S = env_float("RELIABILITY_DEDUPE_WINDOW_S", 14 * 86400)
RELIABILITY_OUTBOX_RETENTION_S = env_float("RELIABILITY_OUTBOX_RETENTION_S", 14 * 86400)
# Longest a message may wait in a queue; older ones are dead-lettered, not applied.
RELIABILITY_MAX_MESSAGE_AGE_S = env_float("RELIABILITY_MAX_MESSAGE_AGE_S", 3 * 86400)
RELIABILITY_DEAD_LETTER_REPLAY_WINDOW_S = env_float("RELIABILITY_DEAD_LETTER_REPLAY_WINDOW_S", 7 * 86400)
_retention_problems = retention_horizons_check(
    dedupe_window_s=RELIABILITY_DEDUPE_WINDOW_S,
    outbox_retention_s=RELIABILITY_OUTBOX_RETENTION_S,
    max_message_age_s=RELIABILITY_MAX_MESSAGE_AGE_S,
    reconcile_grace_s=RELIABILITY_RECONCILE_GRACE_S,
    reconcile_max_attempts=RELIABILITY_RECONCILE_MAX_ATTEMPTS,
    dead_letter_replay_window_s=RELIABILITY_DEAD_LETTER_REPLAY_WINDOW_S,
)
if _retention_problems:
    raise ImproperlyConfigured("unsafe retention settings: " + "; ".join(_retention_problems))

# --- Message ids (reliability/ids.py) ----------------------------------------
# Which generator assigns message ids: uuid7 (default: needs no service), snowflake, redis or
# database. README, "Message ids", says why.
RELIABILITY_ID_GENERATOR = env_str("RELIABILITY_ID_GENERATOR", "uuid7")
if RELIABILITY_ID_GENERATOR not in {"snowflake", "uuid7", "redis", "database"}:
    raise ImproperlyConfigured("RELIABILITY_ID_GENERATOR must be snowflake, uuid7, redis or database")
# Redis for snowflake worker-id leases and the "redis" counter; when unreachable, ids stop
# rather than risk a duplicate. No delivery guarantee depends on Redis.
RELIABILITY_REDIS_URL = env_str("RELIABILITY_REDIS_URL", "redis://127.0.0.1:6379/0")
# A fixed snowflake worker id (0..1023), unique per *process*; unset: leased from Redis.
RELIABILITY_SNOWFLAKE_WORKER_ID = (
    env_int("RELIABILITY_SNOWFLAKE_WORKER_ID", 0)
    if os.environ.get("RELIABILITY_SNOWFLAKE_WORKER_ID")
    else None
)
# Lease TTL of a Redis-leased worker id (renewed every TTL/3); ids stop after this long without Redis.
RELIABILITY_SNOWFLAKE_LEASE_TTL_S = env_float("RELIABILITY_SNOWFLAKE_LEASE_TTL_S", 30.0)
# A clock step back of up to this many ms is waited out; more raises ClockMovedBackwards.
RELIABILITY_SNOWFLAKE_MAX_BACKWARD_MS = env_int("RELIABILITY_SNOWFLAKE_MAX_BACKWARD_MS", 50)

# Degrade mode: enter when the oldest unpublished message is this old, or this many
# messages are produced but not applied; leave below half of both.
RELIABILITY_DEGRADE_OUTBOX_AGE_S = env_float("RELIABILITY_DEGRADE_OUTBOX_AGE_S", 30.0)
RELIABILITY_DEGRADE_LAG_MESSAGES = env_int("RELIABILITY_DEGRADE_LAG_MESSAGES", 10_000)
RELIABILITY_DEGRADE_RETRY_AFTER_S = env_int("RELIABILITY_DEGRADE_RETRY_AFTER_S", 30)

# Fault points for the failure tests (see reliability/faults.py). Refused in production.
RELIABILITY_FAULT_INJECTION = env_bool("RELIABILITY_FAULT_INJECTION", False)
if RELIABILITY_FAULT_INJECTION and IS_PRODUCTION:
    raise ImproperlyConfigured("RELIABILITY_FAULT_INJECTION cannot be enabled in production")

# --- Domain -----------------------------------------------------------------

# Refuse trades above this many beans (a typo guard, not a business limit).
TRADES_MAX_BEANS = env_int("TRADES_MAX_BEANS", 1_000_000_000)
# At most this many trades in one batch placement (POST /api/trades/batch/), one transaction.
TRADES_BATCH_MAX = env_int("TRADES_BATCH_MAX", 100)
if not 1 <= TRADES_BATCH_MAX <= 1000:
    raise ImproperlyConfigured("TRADES_BATCH_MAX must be between 1 and 1000")

if IS_PRODUCTION:
    SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("DJANGO_SECURE_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True

# Which fault points fire (see reliability/faults.py); only read when injection is on.
RELIABILITY_FAULTS = env_str("RELIABILITY_FAULTS", "")
RELIABILITY_FAULT_DIR = env_str("RELIABILITY_FAULT_DIR", str(BASE_DIR / ".run" / "faults"))

TEST_RUNNER = "tests.runner.PipelineTestRunner"

# Databases holding reliability tables (each side's outbox and message log live with its data).
RELIABILITY_DATABASES = list(DATABASES)
