"""Broker topology: durable quorum queues, each with a dead-letter exchange.

Pure kombu, no Django imports, so ``settings.py`` can build ``CELERY_TASK_QUEUES``
from it. Every queue is a quorum queue (replicated with Raft, durable, messages
persistent); a message that exceeds the delivery limit, or that a consumer
rejects, goes to the dead-letter exchange instead of being dropped.
"""

from collections.abc import Iterable

from kombu import Connection, Exchange, Queue


def quorum_queue(
    name: str,
    *,
    dead_letter_exchange: str,
    delivery_limit: int,
    replicas: int = 3,
    max_length: int | None = None,
) -> Queue:
    """Return a durable quorum queue bound to a topic exchange of the same name.

    Topic, not direct: Celery's native delayed delivery (countdowns on quorum
    queues) only works through topic or fanout exchanges. ``replicas`` is the
    Raft group size on a cluster (a single node simply holds the one replica);
    a publish is confirmed once a majority of them stored the message.
    ``max_length`` bounds the queue: a publish beyond it is refused (basic.nack,
    ``reject-publish``), never dropped, and the message waits in the outbox.
    """
    return Queue(
        name,
        Exchange(name, type="topic", durable=True),
        routing_key=name,
        durable=True,
        queue_arguments={
            "x-queue-type": "quorum",
            "x-quorum-initial-group-size": replicas,
            "x-dead-letter-exchange": dead_letter_exchange,
            "x-dead-letter-routing-key": name,
            "x-delivery-limit": delivery_limit,
            # Dead-letter at least once: the broker keeps a message until the
            # dead-letter queue confirmed it (needs reject-publish overflow).
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
            **({"x-max-length": max_length} if max_length else {}),
        },
    )


def dead_letter_queue(
    *, exchange: str, queue: str, routing_keys: Iterable[str], replicas: int = 3
) -> list[Queue]:
    """Return the dead-letter queue bound once per source queue's routing key."""
    dlx = Exchange(exchange, type="direct", durable=True)
    return [
        Queue(
            queue,
            dlx,
            routing_key=key,
            durable=True,
            queue_arguments={"x-queue-type": "quorum", "x-quorum-initial-group-size": replicas},
        )
        for key in routing_keys
    ]


def topology_declare(connection: Connection, queues: Iterable[Queue], dead_letters: Iterable[Queue]) -> None:
    """Declare exchanges, queues and bindings; idempotent."""
    channel = connection.default_channel
    for queue in [*dead_letters, *queues]:
        queue.bind(channel).declare()
