"""Django settings: the one module that reads the environment.

Every value has a default that works on a developer machine (services on
127.0.0.1, see README) and none of them is a production secret. Production sets
``DJANGO_ENV=production`` and must then provide ``DJANGO_SECRET_KEY``,
``DJANGO_ALLOWED_HOSTS``, ``DATABASE_URL`` and ``CELERY_BROKER_URL`` (not guest).
"""

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from project.environment import DEFAULT_BROKER_URL, DEFAULT_DATABASE_URL
from reliability import beat_schedule, quorum_queue
from reliability.conf import DEFAULTS as RELIABILITY_DEFAULTS
from reliability.conf import environment_settings

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
# The reliability library's settings: any RELIABILITY_* set in the environment, parsed as its
# default's type. Every one has its default and meaning in reliability/conf.py; the rules that
# tie them together are system checks (reliability/checks.py), which a worker runs before it
# consumes. Below, only what this project decides differently, and what Celery must agree with.
globals().update(environment_settings(os.environ))


def reliability_setting(name: str) -> Any:
    return globals().get(name, RELIABILITY_DEFAULTS[name])


# Celery's own connections get the library's broker deadlines (README, "Partitions and
# timeouts"): AMQP heartbeats let both ends notice a silent peer (the broker closes a worker's
# connection after two missed ones and hands its unacknowledged messages to other consumers),
# and no blocking socket read or write waits longer than the I/O timeout.
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#broker-heartbeat
CELERY_BROKER_HEARTBEAT = reliability_setting("RELIABILITY_BROKER_HEARTBEAT_S")
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#broker-connection-timeout
CELERY_BROKER_CONNECTION_TIMEOUT = reliability_setting("RELIABILITY_CONNECT_TIMEOUT_S")
# Every publish Celery itself makes (beat, events) waits for the broker's confirm, and no
# blocking socket operation on any of its connections waits longer than the I/O timeout.
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#broker-transport-options
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "confirm_publish": True,
    # Celery negotiates heartbeats on the consumer's connection only (broker_heartbeat); this
    # asks for them on its publishing connections too (beat, events), so the broker drops
    # those of a process that went silent. They publish every second or two while healthy.
    "heartbeat": CELERY_BROKER_HEARTBEAT,
    "read_timeout": reliability_setting("RELIABILITY_BROKER_IO_TIMEOUT_S"),
    "write_timeout": reliability_setting("RELIABILITY_BROKER_IO_TIMEOUT_S"),
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
# declare them (reliability.worker, RELIABILITY_NATIVE_DELAYED_DELIVERY off); a countdown then
# fails loudly (no such exchange).
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

# How many times the broker delivers a message before dead-lettering it (quorum queues).
RELIABILITY_DELIVERY_LIMIT = env_int("RELIABILITY_DELIVERY_LIMIT", 20)
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
        dead_letter_exchange=reliability_setting("RELIABILITY_DEAD_LETTER_EXCHANGE"),
        delivery_limit=RELIABILITY_DELIVERY_LIMIT,
        replicas=reliability_setting("RELIABILITY_QUORUM_REPLICAS"),
        max_length=RELIABILITY_QUEUE_MAX_LENGTH or None,
    )
    for name in (*BEANS_QUEUES, "trades", "housekeeping")
]
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#task-default-queue
CELERY_TASK_DEFAULT_QUEUE = "housekeeping"
CELERY_TASK_DEFAULT_EXCHANGE = "housekeeping"
CELERY_TASK_DEFAULT_ROUTING_KEY = "housekeeping"

# Periodic tasks: the library's, every interval from the environment.
# https://docs.celeryq.dev/en/stable/userguide/periodic-tasks.html
CELERY_BEAT_SCHEDULE = beat_schedule(
    relay_s=env_float("RELIABILITY_RELAY_INTERVAL_S", 1.0),
    reconcile_s=env_float("RELIABILITY_RECONCILE_INTERVAL_S", 10.0),
    heartbeat_s=env_float("RELIABILITY_HEARTBEAT_INTERVAL_S", 5.0),
    dead_letters_s=env_float("RELIABILITY_DEAD_LETTER_DRAIN_INTERVAL_S", 5.0),
    degrade_s=env_float("RELIABILITY_DEGRADE_INTERVAL_S", 5.0),
)

# --- Reliability: what this project decides beyond the library's defaults -----

# Message signing (reliability/signing.py): RELIABILITY_SIGNING_KEYS="key_id:secret,..." - every
# key is accepted on consumption; RELIABILITY_SIGNING_KEY_ID (default: the first) signs. Rotate
# by adding a key everywhere, switching the active id, and dropping the old key later. A
# development key unless set; production refuses it.
if "RELIABILITY_SIGNING_KEYS" not in globals():
    RELIABILITY_SIGNING_KEYS = {"dev": b"development-signing-key-never-use-in-production"}
if IS_PRODUCTION and "dev" in reliability_setting("RELIABILITY_SIGNING_KEYS"):
    raise ImproperlyConfigured(
        "DJANGO_ENV=production needs RELIABILITY_SIGNING_KEYS of its own (not the dev key)"
    )
if IS_PRODUCTION and reliability_setting("RELIABILITY_FAULT_INJECTION"):
    raise ImproperlyConfigured("RELIABILITY_FAULT_INJECTION cannot be enabled in production")
# Fault markers (reliability/faults.py) with the project's other run-time files.
RELIABILITY_FAULT_DIR = env_str("RELIABILITY_FAULT_DIR", str(BASE_DIR / ".run" / "faults"))

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

TEST_RUNNER = "tests.runner.PipelineTestRunner"

# Databases holding reliability tables (each side's outbox and message log live with its data).
RELIABILITY_DATABASES = list(DATABASES)
