"""Stream positions (``reliability.consume.streams``): watermarks, gaps and tails, from the
consumer's own data (database only)."""

from django.db import transaction
from django.test import TestCase

from reliability.consume.streams import stream_high_record, stream_position_record
from reliability.models import StreamGap, StreamWatermark

HANDLER = "tests.handler"


def apply(*seqs: int, stream: str = "s", high: int | None = None) -> StreamWatermark:
    for seq in seqs:
        with transaction.atomic():
            stream_position_record(handler=HANDLER, stream=stream, seq=seq, producer_high=high)
    return StreamWatermark.objects.get(handler=HANDLER, stream=stream)


def open_gaps(stream: str = "s") -> list[int]:
    return list(
        StreamGap.objects.filter(handler=HANDLER, stream=stream)
        .exclude(status=StreamGap.Status.HEALED)
        .order_by("seq")
        .values_list("seq", flat=True)
    )


class StreamPositionTests(TestCase):
    def test_in_order_seqs_advance_the_watermark_without_gaps(self) -> None:
        position = apply(1, 2, 3)
        self.assertEqual((position.watermark, position.max_seen, position.gaps_open), (3, 3, 0))
        self.assertFalse(StreamGap.objects.exists())

    def test_a_skipped_seq_is_a_gap_until_it_arrives(self) -> None:
        position = apply(1, 2, 5)
        self.assertEqual(open_gaps(), [3, 4])
        self.assertEqual((position.watermark, position.max_seen, position.gaps_found), (2, 5, 2))
        position = apply(4)
        self.assertEqual(open_gaps(), [3])
        self.assertEqual(position.watermark, 2, "4 arrived but 3 is still missing")
        position = apply(3)
        self.assertEqual(open_gaps(), [])
        self.assertEqual((position.watermark, position.gaps_open, position.gaps_healed), (5, 0, 2))

    def test_out_of_order_arrival_heals_without_losing_the_high_water(self) -> None:
        position = apply(3, 1, 2)
        self.assertEqual((position.watermark, position.max_seen, position.gaps_open), (3, 3, 0))

    def test_streams_are_independent(self) -> None:
        apply(1, 3, stream="a")
        position = apply(1, 2, stream="b")
        self.assertEqual(open_gaps("a"), [2])
        self.assertEqual((position.watermark, position.gaps_open), (2, 0))

    def test_producer_high_comes_from_envelopes_and_heartbeats(self) -> None:
        position = apply(1, high=4)
        self.assertEqual(position.producer_high, 4)
        with transaction.atomic():
            stream_high_record(handler=HANDLER, stream="s", producer_high=9)
        position.refresh_from_db()
        self.assertEqual(position.producer_high, 9)
        with transaction.atomic():
            stream_high_record(handler=HANDLER, stream="s", producer_high=2)
        position.refresh_from_db()
        self.assertEqual(position.producer_high, 9, "a stale heartbeat never lowers it")
