"""The 64-bit ids carried in a UUID: the snowflake layout, and the order-preserving UUIDv8 that
holds any 64-bit id (the package docstring draws it).
"""

from __future__ import annotations

import uuid

EPOCH_MS = 1_735_689_600_000  # 2025-01-01T00:00:00Z

TIMESTAMP_BITS = 41

WORKER_ID_BITS = 10

SEQUENCE_BITS = 12

MAX_WORKER_ID = (1 << WORKER_ID_BITS) - 1

MAX_SEQUENCE = (1 << SEQUENCE_BITS) - 1

MAX_TIMESTAMP = (1 << TIMESTAMP_BITS) - 1

_V8_CONSTANT = (0x8 << 76) | (0b10 << 62)

_V8_TAIL_BITS = 58

_V8_FIXED_MASK = (0xF << 76) | (0b11 << 62) | ((1 << _V8_TAIL_BITS) - 1)


def message_id_from_int(value: int) -> uuid.UUID:
    """Return the order-preserving UUIDv8 that carries the 64-bit ``value``."""
    if not 0 <= value < 1 << 64:
        raise ValueError(f"a message id must fit in 64 unsigned bits, got {value}")
    return uuid.UUID(
        int=((value >> 16) << 80)
        | (((value >> 4) & 0xFFF) << 64)
        | ((value & 0xF) << _V8_TAIL_BITS)
        | _V8_CONSTANT
    )


def message_id_int(message_id: uuid.UUID) -> int | None:
    """Return the 64-bit id inside a UUIDv8 message id, or None if it carries none."""
    value = message_id.int
    if value & _V8_FIXED_MASK != _V8_CONSTANT:
        return None
    return ((value >> 80) << 16) | (((value >> 64) & 0xFFF) << 4) | ((value >> _V8_TAIL_BITS) & 0xF)


def snowflake_parts(value: int) -> tuple[int, int, int]:
    """Split a snowflake id into (Unix milliseconds, worker id, sequence)."""
    return (
        (value >> (WORKER_ID_BITS + SEQUENCE_BITS)) + EPOCH_MS,
        (value >> SEQUENCE_BITS) & MAX_WORKER_ID,
        value & MAX_SEQUENCE,
    )
