"""Stream positions on the consumer side: watermarks, gaps and the producer's high-water mark.

Every message carries ``(stream, seq)``; a stream's seqs are gap-free at the
producer. The consumer records each seq it applies, in the transaction of the
effect, so it knows from its own data alone what it is missing:

* ``watermark`` W: every seq <= W was applied (or dead-lettered);
* a ``StreamGap`` row per seq skipped below ``max_seen``, healed when it arrives;
* ``producer_high``: the highest seq the producer says exists (from every envelope
  and from the periodic heartbeat), so a lost tail is visible too.

The watermark row is locked for the rest of the transaction, so one stream's
positions are updated in order; other streams are not held up. Cost per message:
one upsert and one update while a stream has no open gap.
"""

import enum
import itertools
from typing import Any

from django.db import connections
from django.utils import timezone

from reliability.models import StreamGap, StreamWatermark

_WM = StreamWatermark._meta.db_table
_GAP = StreamGap._meta.db_table


def _watermark_lock(cursor: Any, *, handler: str, stream: str) -> tuple[int, int, int, int, int]:
    """Create or lock the (handler, stream) row; return id, watermark, max_seen, producer_high, gaps_open."""
    now = timezone.now()
    cursor.execute(
        f"INSERT INTO {_WM} (handler, stream, watermark, max_seen, producer_high, gaps_found, gaps_healed, "  # noqa: S608
        "gaps_open, updated_at) VALUES (%s, %s, 0, 0, 0, 0, 0, 0, %s) "
        "ON CONFLICT (handler, stream) DO UPDATE SET updated_at = EXCLUDED.updated_at "
        "RETURNING id, watermark, max_seen, producer_high, gaps_open",
        [handler, stream, now],
    )
    return cursor.fetchone()


def stream_position_record(
    *, handler: str, stream: str, seq: int, producer_high: int | None = None, using: str = "default"
) -> int:
    """Record that ``handler`` has ``seq`` of ``stream`` (inside the effect's transaction).

    Return the new watermark: every seq up to it is now applied, dead-lettered or
    parked in order behind this one (see ``reliability.consume.order``).
    """
    now = timezone.now()
    with connections[using].cursor() as cursor:
        wm_id, watermark, max_seen, high, gaps_open = _watermark_lock(cursor, handler=handler, stream=stream)
        found = healed = 0
        if seq > max_seen + 1:
            cursor.execute(
                f"INSERT INTO {_GAP} (handler, stream, seq, status, detected_at, republish_attempts, last_error) "  # noqa: S608
                "SELECT %s, %s, g, 'open', %s, 0, '' FROM generate_series(%s::bigint, %s::bigint) AS g "
                "ON CONFLICT (handler, stream, seq) DO NOTHING",
                [handler, stream, now, max_seen + 1, seq - 1],
            )
            found = cursor.rowcount
        if gaps_open + found > 0:
            cursor.execute(
                f"UPDATE {_GAP} SET status = 'healed', healed_at = %s "  # noqa: S608
                "WHERE handler = %s AND stream = %s AND seq = %s AND status <> 'healed'",
                [now, handler, stream, seq],
            )
            healed = cursor.rowcount
        max_seen = max(max_seen, seq)
        gaps_open = gaps_open + found - healed
        if gaps_open > 0:
            cursor.execute(
                f"SELECT min(seq) FROM {_GAP} WHERE handler = %s AND stream = %s AND status <> 'healed'",  # noqa: S608
                [handler, stream],
            )
            (lowest_gap,) = cursor.fetchone()
            watermark = min(lowest_gap - 1, max_seen)
        else:
            watermark = max_seen
        new_high = max(high, max_seen, producer_high or 0)
        cursor.execute(
            f"UPDATE {_WM} SET watermark = %s, max_seen = %s, producer_high = %s, "  # noqa: S608
            "producer_high_at = CASE WHEN %s > producer_high THEN %s ELSE producer_high_at END, "
            "gaps_found = gaps_found + %s, gaps_healed = gaps_healed + %s, gaps_open = %s, "
            "last_applied_at = %s, updated_at = %s WHERE id = %s",
            [watermark, max_seen, new_high, new_high, now, found, healed, gaps_open, now, now, wm_id],
        )
    return int(watermark)


class RunFit(enum.Enum):
    """Whether runs of seqs continue their streams' watermarks (``stream_runs_record``)."""

    FITS = "fits"
    # Nothing of the stream seen past the watermark, and the run starts further on: its
    # predecessor has not arrived yet, and may be committing in another process right now.
    AHEAD = "ahead"
    # Not consecutive, or the stream already has a gap or has seen beyond its watermark.
    OFF = "off"


def stream_runs_record(
    *, handler: str, runs: dict[str, tuple[list[int], int]], using: str = "default"
) -> RunFit:
    """Record runs of seqs ``{stream: (seqs, producer_high)}`` in two statements, if each fits.

    ``FITS`` when, for every stream, the seqs are consecutive and start right after
    the watermark with no open gap and nothing seen beyond it: each watermark moves
    to the last of its run. Otherwise nothing is written (the rows stay locked) and
    ``AHEAD`` or ``OFF`` says why; the caller then rolls back, and may wait for the
    predecessor (``AHEAD``) or record the messages one by one. The rows are locked
    in stream order, the one lock order of every caller.
    """
    for seqs, _ in runs.values():
        if any(later != earlier + 1 for earlier, later in itertools.pairwise(seqs)):
            return RunFit.OFF
    streams = sorted(runs)
    now = timezone.now()
    with connections[using].cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {_WM} (handler, stream, watermark, max_seen, producer_high, gaps_found, gaps_healed, "  # noqa: S608
            "gaps_open, updated_at) SELECT %s, s, 0, 0, 0, 0, 0, 0, %s FROM unnest(%s::text[]) AS s "
            "ON CONFLICT (handler, stream) DO UPDATE SET updated_at = EXCLUDED.updated_at "
            "RETURNING stream, id, watermark, max_seen, producer_high, gaps_open",
            [handler, now, streams],
        )
        current = {row[0]: row[1:] for row in cursor.fetchall()}
        ids, lasts, highs = [], [], []
        for stream in streams:
            seqs, producer_high = runs[stream]
            wm_id, watermark, max_seen, high, gaps_open = current[stream]
            if gaps_open or watermark != max_seen or seqs[0] <= max_seen:
                return RunFit.OFF
            if seqs[0] != max_seen + 1:
                return RunFit.AHEAD
            ids.append(wm_id)
            lasts.append(seqs[-1])
            highs.append(max(high, seqs[-1], producer_high))
        cursor.execute(
            f"UPDATE {_WM} AS w SET watermark = u.last, max_seen = u.last, "  # noqa: S608
            "producer_high_at = CASE WHEN u.high > w.producer_high THEN %s ELSE w.producer_high_at END, "
            "producer_high = u.high, last_applied_at = %s, updated_at = %s "
            "FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[]) AS u(id, last, high) WHERE w.id = u.id",
            [now, now, now, ids, lasts, highs],
        )
    return RunFit.FITS


def stream_watermark_lock(*, handler: str, stream: str, using: str = "default") -> int:
    """Lock the (handler, stream) position for the rest of the transaction; return its watermark."""
    with connections[using].cursor() as cursor:
        return int(_watermark_lock(cursor, handler=handler, stream=stream)[1])


def stream_high_record(*, handler: str, stream: str, producer_high: int, using: str = "default") -> None:
    """Record the producer's high-water mark of ``stream`` (from a heartbeat)."""
    now = timezone.now()
    with connections[using].cursor() as cursor:
        wm_id, _, _, high, _ = _watermark_lock(cursor, handler=handler, stream=stream)
        if producer_high > high:
            cursor.execute(
                f"UPDATE {_WM} SET producer_high = %s, producer_high_at = %s WHERE id = %s",  # noqa: S608
                [producer_high, now, wm_id],
            )


def stream_tail_materialize(*, watermark: StreamWatermark, using: str = "default") -> int:
    """Turn the unseen tail (max_seen, producer_high] into gap rows; return how many were new.

    The caller holds the watermark row lock (``select_for_update``).
    """
    if watermark.producer_high <= watermark.max_seen:
        return 0
    now = timezone.now()
    with connections[using].cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {_GAP} (handler, stream, seq, status, detected_at, republish_attempts, last_error) "  # noqa: S608
            "SELECT %s, %s, g, 'open', %s, 0, '' FROM generate_series(%s::bigint, %s::bigint) AS g "
            "ON CONFLICT (handler, stream, seq) DO NOTHING",
            [watermark.handler, watermark.stream, now, watermark.max_seen + 1, watermark.producer_high],
        )
        found = cursor.rowcount
        if found:
            cursor.execute(
                f"UPDATE {_WM} SET gaps_found = gaps_found + %s, gaps_open = gaps_open + %s WHERE id = %s",  # noqa: S608
                [found, found, watermark.pk],
            )
    return found
