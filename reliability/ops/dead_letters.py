"""Dead letters: drain the broker's dead-letter queue into the table, replay, discard.

The broker dead-letters a message when a consumer rejects it for good (a body
Celery cannot decode, an unknown task) or when it exceeds the queue's delivery
limit (a handler that kept failing). ``dead_letters_drain`` moves each one into
``DeadLetter`` with the reason (from ``x-death``), its message_id, headers and raw
body, and acknowledges it only after that row committed: nothing is lost.

A stream position (stream, seq) is recorded with a dead letter only when its
envelope is authentic and addressed to the task it was dead-lettered from: a
message published under another task name would otherwise count as a position of
the wrong handler, a gap that never heals. A periodic housekeeping task that
expired in its queue is not a dead letter at all: it is dropped, logged and
counted (``PipelineCounter`` "housekeeping_expired_dropped", on ``/metrics``).

A replay publishes the stored envelope again with its *original* message_id, so
replaying something that was in fact applied has no effect (the message log).
A discard keeps the row with the reason someone gave.
"""

import json
import logging
import uuid
from datetime import timedelta
from typing import Any

from celery import current_app
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from reliability.conf import settings
from reliability.consume.dead_letter import dead_letter_record, storable_text
from reliability.counters import pipeline_counter_add
from reliability.envelope import BATCH, MESSAGE, Unauthentic, envelope_verify
from reliability.exceptions import ReliabilityError
from reliability.models import DeadLetter
from reliability.produce.publisher import broker_connection, publisher

logger = logging.getLogger(__name__)

# Counted, not kept: a periodic task that waited in its queue past its ``expires``.
HOUSEKEEPING_EXPIRED_DROPPED = "housekeeping_expired_dropped"

_X_DEATH_REASONS = {
    "delivery_limit": DeadLetter.Reason.DELIVERY_LIMIT,
    "rejected": DeadLetter.Reason.REJECTED,
}


class DeadLetterError(ReliabilityError):
    """A dead letter cannot be replayed or discarded as asked."""


def task_database(task_name: str) -> str:
    """Return the database alias of an exactly-once task (where its message log lives)."""
    task = current_app.tasks.get(task_name)
    return getattr(task, "reliability_database", "default") if task is not None else "default"


def task_queue(task_name: str) -> str:
    current_app.loader.import_default_modules()  # registers the apps' tasks in this process
    task = current_app.tasks.get(task_name)
    return getattr(task, "queue", "") or "" if task is not None else ""


def _body_text(body: bytes | str) -> str:
    """Return the body as text PostgreSQL can store: UTF-8 as it is, other bytes and NUL escaped.

    A body that is not UTF-8 (a pickle, say) must still be recorded: a row that cannot be
    written would stay at the head of the dead-letter queue and stop the drain for good.
    """
    return storable_text(body if isinstance(body, str) else body.decode("utf-8", errors="backslashreplace"))


def _envelope_from_body(body: bytes | str) -> dict[str, Any] | None:
    """Return the exactly-once envelope inside a Celery (protocol 2) JSON body, if there is one."""
    try:
        decoded = json.loads(_body_text(body))
    except (ValueError, RecursionError):
        return None
    if isinstance(decoded, list) and decoded and isinstance(decoded[0], list) and decoded[0]:
        candidate = decoded[0][0]
        if isinstance(candidate, dict):
            return candidate
    return None


def _message_id(envelope: dict[str, Any] | None, properties: dict[str, Any]) -> uuid.UUID | None:
    for raw in ((envelope or {}).get("message_id"), properties.get("correlation_id")):
        try:
            return uuid.UUID(str(raw))
        except ValueError:
            continue
    return None


def _periodic_task_names() -> set[str]:
    return {str(entry.get("task")) for entry in settings.CELERY_BEAT_SCHEDULE.values()}


def _addressed_to(envelope: dict[str, Any] | None, handler: str) -> bool:
    """Whether ``envelope`` is an authentic data message signed for ``handler``."""
    if envelope is None:
        return False
    try:
        envelope_verify(envelope, task=handler, kind=MESSAGE)
    except Unauthentic:
        return False
    return True


def dead_letter_from_broker(body: bytes | str, properties: dict[str, Any]) -> list[DeadLetter]:
    """Record one message taken from the dead-letter queue: a batch envelope, one row per message.

    Each message of a batch keeps its own row (message_id, stream, seq, envelope), so
    each can be replayed, discarded and accounted for on its own. Its stream and seq
    are recorded only when it is authentic and addressed to the task it died in. A
    periodic housekeeping task that expired in its queue is dropped and counted:
    it carries no effect, and the next beat run does its work. Returns the rows kept.
    """
    headers = dict(properties.get("application_headers") or {})
    deaths = headers.get("x-death") or [{}]
    death = deaths[0] if isinstance(deaths, list) and deaths else {}
    broker_reason = str(death.get("reason", ""))
    handler = str(headers.get("task") or "unknown")
    envelope = _envelope_from_body(body)
    if broker_reason == "expired" and envelope is None and handler in _periodic_task_names():
        pipeline_counter_add(name=HOUSEKEEPING_EXPIRED_DROPPED, using=task_database(handler))
        logger.warning(
            "dropped periodic task %s (task id %s): it expired in queue %s; the next beat run does its work",
            handler,
            headers.get("id") or properties.get("correlation_id", "?"),
            death.get("queue", "?"),
        )
        return []
    inner = (envelope or {}).get("messages") if (envelope or {}).get("kind") == BATCH else None
    envelopes = (
        [item if isinstance(item, dict) else None for item in inner] if isinstance(inner, list) else []
    )
    letters = []
    for one in envelopes or [envelope]:
        seq = (one or {}).get("seq") if _addressed_to(one, handler) else None
        letters.append(
            dead_letter_record(
                handler=handler,
                reason=_X_DEATH_REASONS.get(broker_reason, DeadLetter.Reason.BROKER_OTHER),
                detail=f"broker dead-lettered it ({broker_reason or 'no reason given'}) from queue "
                f"{death.get('queue', '?')} after {death.get('count', '?')} time(s)"
                + (f", in a batch of {len(envelopes)}" if envelopes else ""),
                envelope=one,
                message_id=_message_id(one, {} if envelopes else properties),
                stream=str((one or {}).get("stream", "")) if isinstance(seq, int) else "",
                seq=seq if isinstance(seq, int) and not isinstance(seq, bool) else None,
                queue=str(death.get("queue", "")),
                headers={
                    **headers,
                    "properties": {k: v for k, v in properties.items() if k != "application_headers"},
                },
                body=_body_text(body),
                using=task_database(handler),
            )
        )
    return letters


def dead_letters_drain(*, limit: int = 500) -> int:
    """Move up to ``limit`` messages from the broker's dead-letter queue into the table."""
    drained = 0
    with broker_connection() as conn:  # a deadline on every wait, basic.get included
        channel = conn.channel()
        for _ in range(limit):
            message = channel.basic_get(settings.RELIABILITY_DEAD_LETTER_QUEUE, no_ack=False)
            if message is None:
                break
            try:
                dead_letter_from_broker(message.body, dict(message.properties))
            except Exception:
                # Not recorded: leave it in the queue for the next drain, never ack it away.
                channel.basic_reject(message.delivery_tag, requeue=True)
                raise
            channel.basic_ack(message.delivery_tag)
            drained += 1
    if drained:
        logger.info("drained %d dead letters into the table", drained)
    return drained


def dead_letter_replay(*, letter_id: int, using: str = "default") -> DeadLetter:
    """Publish a dead letter again with its original message_id; count the replay."""
    with transaction.atomic(using=using):
        letter = DeadLetter.objects.using(using).select_for_update().get(pk=letter_id)
        if letter.status == DeadLetter.Status.DISCARDED:
            raise DeadLetterError(
                f"dead letter {letter_id} was discarded ({letter.discard_reason}); not replaying"
            )
        window = timedelta(seconds=settings.RELIABILITY_DEAD_LETTER_REPLAY_WINDOW_S)
        if letter.created_at < timezone.now() - window:
            raise DeadLetterError(
                f"dead letter {letter_id} is older than RELIABILITY_DEAD_LETTER_REPLAY_WINDOW_S: the message log "
                "may no longer recognise it, so a replay could apply it twice"
            )
        envelope = letter.envelope
        if not isinstance(envelope, dict) or letter.message_id is None:
            raise DeadLetterError(
                f"dead letter {letter_id} has no readable envelope to replay; discard it instead"
            )
        queue = letter.queue or task_queue(letter.handler)
        if not queue:
            raise DeadLetterError(f"dead letter {letter_id}: no queue is known for task {letter.handler}")
        publisher().publish(
            task_name=letter.handler, queue=queue, message_id=str(letter.message_id), envelope=envelope
        )
        DeadLetter.objects.using(using).filter(pk=letter.pk).update(
            status=DeadLetter.Status.REPLAYED,
            replays=F("replays") + 1,
            last_replayed_at=timezone.now(),
            updated_at=timezone.now(),
        )
    logger.info("replayed dead letter %d: message %s to %s", letter_id, letter.message_id, letter.handler)
    letter.refresh_from_db(using=using)
    return letter


def dead_letter_discard(*, letter_id: int, reason: str, using: str = "default") -> DeadLetter:
    """Give up on a dead letter, keeping it with the reason."""
    if not reason.strip():
        raise DeadLetterError("a discard needs a reason")
    with transaction.atomic(using=using):
        letter = DeadLetter.objects.using(using).select_for_update().get(pk=letter_id)
        letter.status = DeadLetter.Status.DISCARDED
        letter.discard_reason = reason.strip()[:2000]
        letter.updated_at = timezone.now()
        letter.save(using=using, update_fields=["status", "discard_reason", "updated_at"])
    logger.info("discarded dead letter %d (message %s): %s", letter_id, letter.message_id, reason)
    return letter
