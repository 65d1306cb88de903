"""The wire format: the bytes each envelope kind puts on the wire, pinned.

Built through the producer's own paths (the relay's packing, the heartbeat sender) with a fixed
key, so any change to what goes on the wire (a key renamed, reordered or added, a different
canonical form under the signature) fails here and has to be a deliberate, versioned change.
"""

import datetime
import json
import uuid
from unittest import mock

from django.test import TestCase, override_settings

from reliability.models import OutboxMessage, StreamCounter
from reliability.produce.heartbeat import stream_heartbeat_send
from reliability.produce.relay import outbox_envelopes_pack

PIN_KEYS = {"RELIABILITY_SIGNING_KEYS": {"pin": b"p" * 32}, "RELIABILITY_SIGNING_KEY_ID": "pin"}

SINGLE = (
    '{"v": 1, "task": "beans.deduct", "kind": "message", '
    '"message_id": "00000000-0000-0000-0000-000000000001", "stream": "deductions.3", "seq": 1, '
    '"high": 5, "produced_at": "2026-12-07T16:00:01+00:00", '
    '"payload": {"trade_id": 1, "beans": 10, "note": "\\u00e9"}, "kid": "pin", '
    '"sig": "a70c9baf52c35ccbdd2f0c359847c3dc57f300e53cac3e313117e722d4477bec"}'
)
SECOND = (
    '{"v": 1, "task": "beans.deduct", "kind": "message", '
    '"message_id": "00000000-0000-0000-0000-000000000002", "stream": "deductions.3", "seq": 2, '
    '"high": 5, "produced_at": "2026-12-07T16:00:02+00:00", '
    '"payload": {"trade_id": 2, "beans": 20, "note": "\\u00e9"}, "kid": "pin", '
    '"sig": "7ea0d9c3d172fc9394e5d4719916655703fe5138e34b1f92601224ee7fb17230"}'
)
BATCH = f'{{"v": 1, "kind": "batch", "messages": [{SINGLE}, {SECOND}]}}'
HEARTBEAT = (
    '{"v": 1, "task": "beans.deduct", "kind": "heartbeat", "stream": "deductions.3", "high": 7, '
    '"kid": "pin", "sig": "c6666675f996d9ae64cdc6d9ce854b44528cef3bc7742c98250eab0974ca5072"}'
)


def row(n: int) -> OutboxMessage:
    return OutboxMessage(
        pk=n,
        message_id=uuid.UUID(int=n),
        task_name="beans.deduct",
        queue="beans",
        stream="deductions.3",
        seq=n,
        payload={"trade_id": n, "beans": 10 * n, "note": "é"},
        created_at=datetime.datetime(2026, 12, 7, 16, 0, n, tzinfo=datetime.UTC),
    )


@override_settings(**PIN_KEYS)
class PinnedWireFormatTests(TestCase):
    """What the producer publishes, byte for byte (key order included: JSON keeps it)."""

    def test_a_single_message_envelope_is_pinned(self) -> None:
        ((publish, rows),) = outbox_envelopes_pack([row(1)], highs={"deductions.3": 5})
        self.assertEqual(json.dumps(publish.envelope), SINGLE)
        self.assertEqual((publish.task_id, rows), ("00000000-0000-0000-0000-000000000001", [row(1)]))

    def test_a_batch_envelope_is_pinned(self) -> None:
        ((publish, rows),) = outbox_envelopes_pack([row(2), row(1)], highs={"deductions.3": 5})
        self.assertEqual(json.dumps(publish.envelope), BATCH)
        self.assertEqual([r.seq for r in rows], [1, 2])

    def test_a_heartbeat_envelope_is_pinned(self) -> None:
        StreamCounter.objects.create(
            stream="deductions.3", last_seq=7, task_name="beans.deduct", queue="beans"
        )
        with mock.patch("reliability.produce.heartbeat.publisher") as captured:
            captured.return_value.publish_many.side_effect = lambda items: [None] * len(items)
            self.assertEqual(stream_heartbeat_send(), 1)
        ((heartbeat,),) = captured.return_value.publish_many.call_args.args
        self.assertEqual(json.dumps(heartbeat.envelope), HEARTBEAT)
        self.assertEqual((heartbeat.task_name, heartbeat.queue), ("beans.deduct", "beans"))
