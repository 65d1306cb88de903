"""Message ids: globally unique, assigned once at produce time, kept on every re-publish."""

import os
import time
import uuid


def message_id_new() -> uuid.UUID:
    """Return a UUIDv7: 48-bit Unix milliseconds, then 74 random bits.

    Time-ordered ids keep the message-log index append-mostly (unlike UUIDv4), and
    need no coordination between processes.
    """
    unix_ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (unix_ms & 0xFFFF_FFFF_FFFF) << 80
    value |= 0x7 << 76  # version 7
    value |= ((rand >> 62) & 0xFFF) << 64  # rand_a, 12 bits
    value |= 0b10 << 62  # RFC 9562 variant
    value |= rand & 0x3FFF_FFFF_FFFF_FFFF  # rand_b, 62 bits
    return uuid.UUID(int=value)
