"""Message authenticity: every envelope carries an HMAC-SHA256 signature and the id of its key.

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
from typing import Any

from .conf import settings
from .exceptions import ReliabilityError

SIGNATURE = "sig"
KEY_ID = "kid"
# The address: the task an envelope is signed for, and its kind.
TASK = "task"
KIND = "kind"
# The kind of a data message (an outbox row); also what an unaddressed envelope without a
# kind is, since data messages carried none before the address existed.
MESSAGE = "message"


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
