"""Celery and RabbitMQ: connections and their deadlines, acks, queues, the beat schedule."""

from project.environment import DEFAULT_BROKER_URL
from reliability import beat_schedule, quorum_queue

from .domain import BEANS_QUEUES
from .env import env_bool, env_float, env_int, env_str
from .reliability import reliability_setting

# Each setting links the line of the Celery docs that explains it:
# https://docs.celeryq.dev/en/stable/userguide/configuration.html

CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", DEFAULT_BROKER_URL)
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#broker-connection-retry-on-startup
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A channel the broker closes (a delivery that outlived consumer_timeout: PRECONDITION_FAILED)
# restarts the consumer instead of ending the worker; the delivery is requeued by the broker.
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#broker-channel-error-retry
CELERY_BROKER_CHANNEL_ERROR_RETRY = True
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
# Celery's Django fixup closes every database connection before and after each task unless this
# is set (Celery 5.6+: CONN_MAX_AGE is not consulted), so each task paid a new PostgreSQL session
# (a backend forked and authenticated, 6-7 ms of server CPU here). With it, Celery closes them only
# every 2 x N tasks, and reliability.worker_steps_install closes what Django would close after a
# request: a connection that failed its health check, left autocommit off, or passed CONN_MAX_AGE.
CELERY_DB_REUSE_MAX = env_int("CELERY_DB_REUSE_MAX", 1000)
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
# Undecodable messages are rejected to the dead-letter exchange, not acknowledged away: the
# worker's consumer is reliability's DeadLetteringConsumer (worker_steps_install sets it).
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#worker-send-task-events
CELERY_WORKER_SEND_TASK_EVENTS = env_bool("CELERY_WORKER_SEND_TASK_EVENTS", False)

# How many times the broker delivers a message before dead-lettering it (quorum queues).
RELIABILITY_DELIVERY_LIMIT = env_int("RELIABILITY_DELIVERY_LIMIT", 20)
# Longest a queue may grow; beyond it the broker refuses publishes (reject-publish) and the
# outbox holds the rest: back-pressure, not loss. 0 = unbounded. A queue argument: changing
# it means re-declaring the queues (see README, "Scaling and back-pressure").
RELIABILITY_QUEUE_MAX_LENGTH = env_int("RELIABILITY_QUEUE_MAX_LENGTH", 100_000)

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
    # Retention also makes the partitions ahead: keep it below width x ahead (RELIABILITY_PARTITION_*);
    # the soak (bench/soak.py) shortens every window to minutes, and retention must run as often.
    retention_s=env_float("RELIABILITY_RETENTION_INTERVAL_S", 600.0),
)
