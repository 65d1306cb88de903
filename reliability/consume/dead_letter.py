"""Recording a dead letter: a message that can never be applied, kept with its reason, envelope
and headers for an operator (``reliability.ops.dead_letters`` drains, replays and discards them).

The consumer records one for an envelope that is not well formed, not authentic or poison; the
drain records what the broker dead-lettered. A letter already recorded for the same message and
handler is reopened rather than duplicated.
"""

import json
import logging
import uuid
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from reliability.consume.streams import stream_position_record
from reliability.models import DeadLetter

logger = logging.getLogger(__name__)


def dead_letter_record(
    *,
    handler: str,
    reason: str,
    detail: str,
    envelope: Any,
    message_id: uuid.UUID | None = None,
    stream: str = "",
    seq: int | None = None,
    queue: str = "",
    headers: dict[str, Any] | None = None,
    body: str = "",
    using: str = "default",
) -> DeadLetter:
    """Keep a message that cannot succeed, with the reason; it is never dropped.

    One row per (handler, message_id): a message that fails again (say after a
    replay) reopens its row and counts another occurrence. Its seq counts as
    accounted for, so the reconciler does not chase it as a gap.
    """
    now = timezone.now()
    fields = {
        "reason": reason,
        "detail": storable_text(detail[:10_000]),
        "envelope": json_safe(envelope),
        "stream": stream,
        "seq": seq,
        "queue": queue,
        "headers": json_safe(headers),
        "body": body[:100_000],
        "updated_at": now,
    }
    with transaction.atomic(using=using):
        letter = _dead_letter_upsert(handler=handler, message_id=message_id, fields=fields, using=using)
        if stream and seq is not None:
            stream_position_record(handler=handler, stream=stream, seq=seq, using=using)
    logger.error("dead-lettered message %s for %s: %s: %s", message_id, handler, reason, detail[:500])
    return letter


def _dead_letter_upsert(
    *, handler: str, message_id: uuid.UUID | None, fields: dict[str, Any], using: str
) -> DeadLetter:
    """Insert the dead letter, or reopen the one recorded before for (handler, message_id)."""
    if message_id is not None:
        letter = (
            DeadLetter.objects.using(using)
            .select_for_update()
            .filter(handler=handler, message_id=message_id)
            .first()
        )
        if letter is not None:
            return _dead_letter_reopen(letter, fields, using=using)
    try:
        with transaction.atomic(using=using):
            return DeadLetter.objects.using(using).create(handler=handler, message_id=message_id, **fields)
    except IntegrityError:  # recorded concurrently: reopen that one
        letter = (
            DeadLetter.objects.using(using).select_for_update().get(handler=handler, message_id=message_id)
        )
        return _dead_letter_reopen(letter, fields, using=using)


def _dead_letter_reopen(letter: DeadLetter, fields: dict[str, Any], *, using: str) -> DeadLetter:
    for name, value in fields.items():
        if value not in (None, "") or name in {"reason", "detail"}:
            setattr(letter, name, value)
    letter.status = DeadLetter.Status.OPEN
    letter.discard_reason = ""
    letter.occurrences += 1
    letter.save(using=using)
    return letter


def json_safe(value: Any) -> Any:
    """Return ``value`` if it is JSON, else its JSON rendering with unknown types as text.

    Text PostgreSQL cannot store (NUL, lone surrogates) is escaped: a dead letter that
    cannot be written would block the drain.
    """
    if value is None:
        return None
    try:
        return _storable(json.loads(json.dumps(value, default=_json_default)))
    except (TypeError, ValueError, RecursionError):
        return {"unserializable": storable_text(repr(value)[:10_000])}


def storable_text(text: str) -> str:
    """``text`` with what PostgreSQL refuses in text and jsonb escaped: NUL and lone surrogates."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def _storable(value: Any) -> Any:
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, list):
        return [_storable(item) for item in value]
    if isinstance(value, dict):
        return {_storable(key): _storable(item) for key, item in value.items()}
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)
