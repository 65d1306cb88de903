"""The wire format, every kind of it (version 1): how each envelope is built, parsed, signed and
verified. The producer builds here and the consumer parses here; nothing else knows a key.

- A data message (``kind: message``): a JSON object of ``v``, ``task`` and ``kind`` (its address),
  ``message_id``, ``stream``, ``seq``, ``high`` (the stream's high-water mark when published),
  ``produced_at``, ``payload``, and the signature ``kid`` and ``sig``. Built from an outbox row by
  ``outbox_envelope``, parsed into a ``Message`` by ``envelope_parse``.
- A batch (``kind: batch``): ``v``, ``kind`` and ``messages``, several data-message envelopes, each
  signed on its own. ``outbox_batch_envelope`` builds it, ``batch_parse`` hands back its messages.
- A heartbeat (``kind: heartbeat``): ``v``, the address, ``stream`` and ``high``, signed; a stream's
  high-water mark. ``heartbeat_envelope`` builds it, ``heartbeat_parse`` reads it.

``envelope_kind`` tells them apart; ``envelope_verify`` checks any signed one. The bytes of each
kind are pinned by ``tests/reliability/test_envelope.py``.

Message authenticity: every envelope carries an HMAC-SHA256 signature and the id of its key.

The producer signs each message's envelope (``outbox_envelope``, heartbeats) with
the active key, ``RELIABILITY_SIGNING_KEY_ID``; the consumer verifies it against
every key in ``RELIABILITY_SIGNING_KEYS`` before anything else touches the
database. An unsigned, forged or tampered message is dead-lettered with the
reason and applies nothing (invariant I3): not even its stream position is
recorded, since its stream and seq are whatever the forger wrote.

The signature covers the canonical JSON of the whole envelope (sorted keys, no
whitespace) except the signature itself, so message_id, stream, seq, payload,
produced_at, the key id and the envelope's *address* are all bound to it. A batch
envelope is not signed as a whole: each message inside carries its own signature
(and its own address), so each can be dead-lettered, replayed and verified on its
own.

The address is the task (handler) the message is meant for and its kind (a data
message, a heartbeat). ``envelope_verify`` takes the task and kind of the path
consuming it and refuses an authentic envelope addressed elsewhere: re-published
under another task name (a routing mistake, a shovel), it would otherwise be
recorded as a stream position of the wrong handler, and that handler would chase
gaps that do not exist. Envelopes signed before the address existed (no
``task``) are accepted while ``RELIABILITY_ACCEPT_UNADDRESSED_ENVELOPES`` is on,
the transition of an upgrade; the address keys are new keys of version 1, which
consumers that predate them verify (the signature covers every key) and ignore.

Rotation: add the new key to ``RELIABILITY_SIGNING_KEYS`` everywhere (consumers
accept it), then make it the active ``RELIABILITY_SIGNING_KEY_ID`` on the
producers, and drop the old key once nothing signed with it can still arrive
(queues drained, the dead-letter replay window passed).
"""

import hashlib
import hmac
import json
import uuid
from dataclasses import dataclass
from typing import Any

from reliability.conf import settings
from reliability.exceptions import InvalidEnvelope, ReliabilityError
from reliability.models import OutboxMessage

# The version every kind is built with and the only one parsed.
ENVELOPE_VERSION = 1

SIGNATURE = "sig"
KEY_ID = "kid"
# The address: the task an envelope is signed for, and its kind.
TASK = "task"
KIND = "kind"
# The kind of a data message (an outbox row); also what an unaddressed envelope without a
# kind is, since data messages carried none before the address existed.
MESSAGE = "message"
# The kind of a stream heartbeat: the producer's high-water mark, no payload to apply.
HEARTBEAT = "heartbeat"
# The kind of an envelope that carries several messages (each a version-1 envelope).
BATCH = "batch"
# How many messages a batch envelope may carry, at least, whatever the producers' setting.
BATCH_MAX_MESSAGES_FLOOR = 1000


class Unauthentic(ReliabilityError):
    """A message that is not authentic *here*.

    Unsigned, signed with an unknown key, forged or tampered, or authentic but addressed
    to another task or kind than the path that took it.
    """


def _canonical(envelope: dict[str, Any]) -> bytes:
    unsigned = {key: value for key, value in envelope.items() if key != SIGNATURE}
    # ASCII: any string, a lone surrogate too, has one encoding, and encoding never fails.
    return json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _digest(key: bytes | str, envelope: dict[str, Any]) -> str:
    secret = key.encode() if isinstance(key, str) else key
    return hmac.new(secret, _canonical(envelope), hashlib.sha256).hexdigest()


def envelope_sign(envelope: dict[str, Any]) -> dict[str, Any]:
    """Return ``envelope`` with the active key id and its signature."""
    key_id = settings.RELIABILITY_SIGNING_KEY_ID
    signed = {**envelope, KEY_ID: key_id}
    signed[SIGNATURE] = _digest(settings.RELIABILITY_SIGNING_KEYS[key_id], signed)
    return signed


def envelope_verify(envelope: dict[str, Any], *, task: str, kind: str) -> None:
    """Raise ``Unauthentic`` saying why, unless ``envelope`` is signed for ``task`` and ``kind``.

    One rule for every path that consumes an envelope (a message, a heartbeat, a
    message inside a batch) and for the dead-letter drain deciding whether a stream
    position may be recorded.
    """
    _signature_verify(envelope)
    if TASK not in envelope:
        if not settings.RELIABILITY_ACCEPT_UNADDRESSED_ENVELOPES:
            raise Unauthentic(
                "unaddressed envelope (signed without a task) refused: "
                "RELIABILITY_ACCEPT_UNADDRESSED_ENVELOPES is off"
            )
        signed_kind = envelope.get(KIND, MESSAGE)
    else:
        if envelope[TASK] != task:
            raise Unauthentic(f"signed for task {envelope[TASK]!r}, delivered to task {task!r}")
        signed_kind = envelope.get(KIND)
    if signed_kind != kind:
        raise Unauthentic(f"signed as kind {signed_kind!r}, taken as kind {kind!r} by task {task!r}")


def _signature_verify(envelope: dict[str, Any]) -> None:
    key_id, signature = envelope.get(KEY_ID), envelope.get(SIGNATURE)
    if not isinstance(signature, str) or not isinstance(key_id, str):
        raise Unauthentic("unsigned message (no key id or signature)")
    key = settings.RELIABILITY_SIGNING_KEYS.get(key_id)
    if key is None:
        raise Unauthentic(f"signed with unknown key id {key_id!r}")
    # Compared as bytes: compare_digest refuses non-ASCII text, and a forger chooses the text.
    if not hmac.compare_digest(
        _digest(key, envelope).encode(), signature.encode("utf-8", "backslashreplace")
    ):
        raise Unauthentic(f"signature does not match (forged or tampered), key id {key_id!r}")


def outbox_envelope(message: OutboxMessage, *, producer_high: int | None = None) -> dict[str, Any]:
    """Return the JSON envelope a consumer receives for ``message``.

    ``high`` is the stream's high-water mark when published, so the consumer can
    see that later seqs exist (a lost tail) even if none of them arrives. Signed
    (below) together with its address, the task and kind it is
    meant for: the consumer applies nothing it cannot verify, and nothing signed for
    another task.
    """
    return envelope_sign(
        {
            "v": ENVELOPE_VERSION,
            TASK: message.task_name,
            KIND: MESSAGE,
            "message_id": str(message.message_id),
            "stream": message.stream,
            "seq": message.seq,
            "high": max(producer_high or 0, message.seq),
            "produced_at": message.created_at.isoformat(),
            "payload": message.payload,
        }
    )


@dataclass(frozen=True)
class Message:
    """One consumed message, as a handler sees it."""

    message_id: uuid.UUID
    stream: str
    seq: int
    produced_at: str
    payload: dict[str, Any]
    producer_high: int | None = None


def envelope_parse(envelope: Any) -> Message:
    """Validate an envelope; raise ``InvalidEnvelope`` saying what is wrong."""
    if not isinstance(envelope, dict):
        raise InvalidEnvelope(f"envelope must be a JSON object, got {type(envelope).__name__}")
    if envelope.get("v") != ENVELOPE_VERSION:
        raise InvalidEnvelope(f"unsupported envelope version {envelope.get('v')!r}")
    try:
        message_id = uuid.UUID(str(envelope["message_id"]))
    except (KeyError, ValueError) as exc:
        raise InvalidEnvelope("envelope has no valid message_id") from exc
    stream, seq, payload = envelope.get("stream"), envelope.get("seq"), envelope.get("payload")
    if not isinstance(stream, str) or not stream:
        raise InvalidEnvelope("envelope has no stream")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise InvalidEnvelope("envelope seq must be a positive integer")
    if not isinstance(payload, dict):
        raise InvalidEnvelope("envelope payload must be a JSON object")
    high = envelope.get("high")
    if high is not None and (not isinstance(high, int) or isinstance(high, bool) or high < seq):
        raise InvalidEnvelope("envelope high must be an integer >= seq")
    return Message(
        message_id=message_id,
        stream=stream,
        seq=seq,
        produced_at=str(envelope.get("produced_at", "")),
        payload=payload,
        producer_high=high,
    )


def envelope_kind(envelope: Any) -> str:
    """Return the kind an envelope says it is (a data message when it does not say)."""
    return envelope.get(KIND, MESSAGE) if isinstance(envelope, dict) else MESSAGE


def outbox_batch_envelope(messages: list[OutboxMessage], *, highs: dict[str, int]) -> dict[str, Any]:
    """Return the envelope that carries ``messages`` together, each in its own signed envelope.

    Not signed as a whole: each message keeps its own message_id, seq and signature, so it can
    be deduplicated, dead-lettered and replayed on its own. ``highs``: each stream's high-water
    mark when published.
    """
    return {
        "v": ENVELOPE_VERSION,
        KIND: BATCH,
        "messages": [outbox_envelope(m, producer_high=highs.get(m.stream)) for m in messages],
    }


def batch_parse(envelope: dict[str, Any]) -> list[Any]:
    """Return the message envelopes a batch carries (each still to parse and verify on its own).

    Raise ``InvalidEnvelope`` unless it carries a list of 1 to
    ``max(RELIABILITY_ENVELOPE_MAX_MESSAGES, 1000)`` of them.
    """
    items = envelope.get("messages")
    limit = max(settings.RELIABILITY_ENVELOPE_MAX_MESSAGES, BATCH_MAX_MESSAGES_FLOOR)
    if not isinstance(items, list) or not items or len(items) > limit:
        raise InvalidEnvelope(f"batch envelope needs a list of 1 to {limit} messages")
    return items


@dataclass(frozen=True)
class Heartbeat:
    """A stream heartbeat: the producer's high-water mark of ``stream``."""

    stream: str
    high: int


def heartbeat_envelope(*, task_name: str, stream: str, high: int) -> dict[str, Any]:
    """Return the signed heartbeat telling ``task_name`` that ``stream`` has reached ``high``."""
    # The address: the stream's consumer, the only task it may move.
    return envelope_sign(
        {"v": ENVELOPE_VERSION, TASK: task_name, KIND: HEARTBEAT, "stream": stream, "high": high}
    )


def heartbeat_parse(envelope: dict[str, Any]) -> Heartbeat:
    """Validate a heartbeat; raise ``InvalidEnvelope`` unless it has a stream and a high."""
    stream, high = envelope.get("stream"), envelope.get("high")
    if (
        not isinstance(stream, str)
        or not stream
        or not isinstance(high, int)
        or isinstance(high, bool)
        or high < 0
    ):
        raise InvalidEnvelope("heartbeat needs a stream name and a non-negative integer high")
    return Heartbeat(stream=stream, high=high)
