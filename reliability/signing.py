"""Message authenticity: every envelope carries an HMAC-SHA256 signature and the id of its key.

The producer signs each message's envelope (``outbox_envelope``, heartbeats) with
the active key, ``RELIABILITY_SIGNING_KEY_ID``; the consumer verifies it against
every key in ``RELIABILITY_SIGNING_KEYS`` before anything else touches the
database. An unsigned, forged or tampered message is dead-lettered with the
reason and applies nothing (invariant I3): not even its stream position is
recorded, since its stream and seq are whatever the forger wrote.

The signature covers the canonical JSON of the whole envelope (sorted keys, no
whitespace) except the signature itself, so message_id, stream, seq, payload,
produced_at and the key id are all bound to it. A batch envelope is not signed
as a whole: each message inside carries its own signature, so each can be
dead-lettered, replayed and verified on its own.

Rotation: add the new key to ``RELIABILITY_SIGNING_KEYS`` everywhere (consumers
accept it), then make it the active ``RELIABILITY_SIGNING_KEY_ID`` on the
producers, and drop the old key once nothing signed with it can still arrive
(queues drained, the dead-letter replay window passed).
"""

import hashlib
import hmac
import json
from typing import Any

from django.conf import settings

from .exceptions import ReliabilityError

SIGNATURE = "sig"
KEY_ID = "kid"


class Unauthentic(ReliabilityError):
    """A message without a valid signature: unsigned, signed with an unknown key, forged or tampered."""


def _canonical(envelope: dict[str, Any]) -> bytes:
    unsigned = {key: value for key, value in envelope.items() if key != SIGNATURE}
    # ASCII: any string, a lone surrogate too, has one encoding, and encoding never fails.
    return json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _digest(key: bytes, envelope: dict[str, Any]) -> str:
    return hmac.new(key, _canonical(envelope), hashlib.sha256).hexdigest()


def envelope_sign(envelope: dict[str, Any]) -> dict[str, Any]:
    """Return ``envelope`` with the active key id and its signature."""
    key_id = settings.RELIABILITY_SIGNING_KEY_ID
    signed = {**envelope, KEY_ID: key_id}
    signed[SIGNATURE] = _digest(settings.RELIABILITY_SIGNING_KEYS[key_id], signed)
    return signed


def envelope_verify(envelope: dict[str, Any]) -> None:
    """Raise ``Unauthentic`` saying why, unless ``envelope`` carries a valid signature."""
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
