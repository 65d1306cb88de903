"""The wire format (``reliability.envelope``): every kind built, parsed, signed and verified.

The bytes of each kind are pinned, built through the producer's own paths (the relay's packing,
the heartbeat sender) with a fixed key, so any change to what goes on the wire (a key renamed,
reordered or added, a different canonical form under the signature) fails here and has to be a
deliberate, versioned change. Then properties, with hypothesis: build, then parse after a JSON
round trip, gives back what was built; a tampered body or signature is refused; for every kind.
"""

import datetime
import json
import uuid
from typing import Any
from unittest import mock

from django.test import SimpleTestCase, TestCase, override_settings
from hypothesis import assume, given
from hypothesis import strategies as st

from reliability.envelope import (
    HEARTBEAT as HEARTBEAT_KIND,
)
from reliability.envelope import (
    KEY_ID,
    MESSAGE,
    SIGNATURE,
    Heartbeat,
    Message,
    Unauthentic,
    batch_parse,
    envelope_kind,
    envelope_parse,
    envelope_sign,
    envelope_verify,
    heartbeat_envelope,
    heartbeat_parse,
    outbox_batch_envelope,
    outbox_envelope,
)
from reliability.exceptions import InvalidEnvelope
from reliability.models import OutboxMessage, StreamCounter
from reliability.produce.heartbeat import stream_heartbeat_send
from reliability.produce.relay import outbox_envelopes_pack
from tests.strategies import examples, json_values

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

    def test_the_envelope_module_builds_the_same_bytes(self) -> None:
        self.assertEqual(json.dumps(outbox_envelope(row(1), producer_high=5)), SINGLE)
        self.assertEqual(
            json.dumps(outbox_batch_envelope([row(1), row(2)], highs={"deductions.3": 5})), BATCH
        )
        envelope = heartbeat_envelope(task_name="beans.deduct", stream="deductions.3", high=7)
        self.assertEqual(json.dumps(envelope), HEARTBEAT)

    def test_the_pinned_envelopes_parse_and_verify(self) -> None:
        single, batch, heartbeat = json.loads(SINGLE), json.loads(BATCH), json.loads(HEARTBEAT)
        envelope_verify(single, task="beans.deduct", kind=MESSAGE)
        self.assertEqual(envelope_parse(single).payload, {"trade_id": 1, "beans": 10, "note": "é"})
        self.assertEqual([envelope_parse(item).seq for item in batch_parse(batch)], [1, 2])
        envelope_verify(heartbeat, task="beans.deduct", kind=HEARTBEAT_KIND)
        self.assertEqual(heartbeat_parse(heartbeat), Heartbeat(stream="deductions.3", high=7))
        self.assertEqual(
            [envelope_kind(e) for e in (single, batch, heartbeat)], ["message", "batch", "heartbeat"]
        )


EXAMPLES = examples(100)
names = st.text(min_size=1, max_size=20)
seqs = st.integers(min_value=1, max_value=2**63 - 1)
payloads = st.dictionaries(st.text(max_size=10), json_values(finite=True), max_size=4)


@st.composite
def outbox_rows(draw: st.DrawFn, *, task_name: str | None = None) -> OutboxMessage:
    return OutboxMessage(
        message_id=draw(st.uuids()),
        task_name=task_name or draw(names),
        queue="q",
        stream=draw(names),
        seq=draw(seqs),
        payload=draw(payloads),
        created_at=draw(st.datetimes(timezones=st.just(datetime.UTC))),
    )


def wire(envelope: dict[str, Any]) -> dict[str, Any]:
    """What the consumer receives: the envelope through JSON."""
    return json.loads(json.dumps(envelope))


def expected(message: OutboxMessage, producer_high: int | None) -> Message:
    return Message(
        message_id=message.message_id,
        stream=message.stream,
        seq=message.seq,
        produced_at=message.created_at.isoformat(),
        payload=message.payload,
        producer_high=max(producer_high or 0, message.seq),
    )


def tampered(envelope: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """``envelope`` with ``key`` set to ``value`` (a different one) and its signature kept."""
    assume(envelope.get(key) != value)
    return {**envelope, key: value}


def signature_flipped(envelope: dict[str, Any], position: int) -> dict[str, Any]:
    signature = envelope[SIGNATURE]
    position %= len(signature)
    flipped = "0" if signature[position] != "0" else "1"
    return {**envelope, SIGNATURE: signature[:position] + flipped + signature[position + 1 :]}


@override_settings(**PIN_KEYS)
class MessageEnvelopePropertyTests(SimpleTestCase):
    """A data message: built from an outbox row, parsed back into the same ``Message``."""

    @EXAMPLES
    @given(message=outbox_rows(), producer_high=st.none() | seqs)
    def test_build_then_parse_gives_back_the_message(
        self, message: OutboxMessage, producer_high: int | None
    ) -> None:
        envelope = wire(outbox_envelope(message, producer_high=producer_high))
        envelope_verify(envelope, task=message.task_name, kind=MESSAGE)
        self.assertEqual(envelope_kind(envelope), MESSAGE)
        self.assertEqual(envelope_parse(envelope), expected(message, producer_high))

    @EXAMPLES
    @given(
        message=outbox_rows(),
        key=st.sampled_from(
            ["v", "task", "kind", "message_id", "stream", "seq", "high", "produced_at", "payload", KEY_ID]
        ),
        value=json_values(finite=True),
    )
    def test_a_tampered_body_is_refused(self, message: OutboxMessage, key: str, value: Any) -> None:
        envelope = tampered(wire(outbox_envelope(message)), key, value)
        with self.assertRaises(Unauthentic):
            envelope_verify(envelope, task=message.task_name, kind=MESSAGE)

    @EXAMPLES
    @given(message=outbox_rows(), position=st.integers(min_value=0))
    def test_a_tampered_signature_is_refused(self, message: OutboxMessage, position: int) -> None:
        envelope = signature_flipped(wire(outbox_envelope(message)), position)
        with self.assertRaises(Unauthentic):
            envelope_verify(envelope, task=message.task_name, kind=MESSAGE)

    @EXAMPLES
    @given(message=outbox_rows())
    @override_settings(RELIABILITY_ACCEPT_UNADDRESSED_ENVELOPES=True)
    def test_an_envelope_signed_before_the_address_existed_is_still_accepted(
        self, message: OutboxMessage
    ) -> None:
        old = {
            k: v for k, v in outbox_envelope(message).items() if k not in ("task", "kind", KEY_ID, SIGNATURE)
        }
        envelope = wire(envelope_sign(old))
        envelope_verify(envelope, task=message.task_name, kind=MESSAGE)
        self.assertEqual(envelope_parse(envelope), expected(message, None))


@override_settings(**PIN_KEYS)
class BatchEnvelopePropertyTests(SimpleTestCase):
    """A batch: each message inside is built, signed, parsed and verified on its own."""

    @EXAMPLES
    @given(messages=st.lists(outbox_rows(task_name="t"), min_size=1, max_size=5), high=seqs)
    def test_build_then_parse_gives_back_every_message(
        self, messages: list[OutboxMessage], high: int
    ) -> None:
        highs = {message.stream: high for message in messages}
        envelope = wire(outbox_batch_envelope(messages, highs=highs))
        self.assertEqual(envelope_kind(envelope), "batch")
        items = batch_parse(envelope)
        for item in items:
            envelope_verify(item, task="t", kind=MESSAGE)
        self.assertEqual([envelope_parse(item) for item in items], [expected(m, high) for m in messages])

    @EXAMPLES
    @given(
        messages=st.lists(outbox_rows(task_name="t"), min_size=1, max_size=5),
        index=st.integers(min_value=0),
        payload=payloads,
        position=st.integers(min_value=0),
        signature=st.booleans(),
    )
    def test_a_tampered_message_is_refused_and_only_it(
        self,
        messages: list[OutboxMessage],
        index: int,
        payload: dict[str, Any],
        position: int,
        signature: bool,
    ) -> None:
        items = batch_parse(wire(outbox_batch_envelope(messages, highs={})))
        index %= len(items)
        items[index] = (
            signature_flipped(items[index], position)
            if signature
            else tampered(items[index], "payload", payload)
        )
        for number, item in enumerate(items):
            if number == index:
                with self.assertRaises(Unauthentic):
                    envelope_verify(item, task="t", kind=MESSAGE)
            else:
                envelope_verify(item, task="t", kind=MESSAGE)

    @EXAMPLES
    @given(
        messages=st.none() | json_values() | st.just([]) | st.lists(st.just({}), min_size=1001, max_size=1001)
    )
    def test_a_batch_without_a_list_of_1_to_1000_messages_is_invalid(self, messages: Any) -> None:
        assume(not (isinstance(messages, list) and 1 <= len(messages) <= 1000))
        with self.assertRaises(InvalidEnvelope):
            batch_parse({"v": 1, "kind": "batch", "messages": messages})


@override_settings(**PIN_KEYS)
class HeartbeatEnvelopePropertyTests(SimpleTestCase):
    """A heartbeat: a stream's high-water mark, addressed to the stream's consumer."""

    @EXAMPLES
    @given(task=names, stream=names, high=st.integers(min_value=0, max_value=2**63 - 1))
    def test_build_then_parse_gives_back_the_heartbeat(self, task: str, stream: str, high: int) -> None:
        envelope = wire(heartbeat_envelope(task_name=task, stream=stream, high=high))
        envelope_verify(envelope, task=task, kind=HEARTBEAT_KIND)
        self.assertEqual(envelope_kind(envelope), HEARTBEAT_KIND)
        self.assertEqual(heartbeat_parse(envelope), Heartbeat(stream=stream, high=high))
        with self.assertRaises(Unauthentic, msg="a heartbeat is never taken as a data message"):
            envelope_verify(envelope, task=task, kind=MESSAGE)

    @EXAMPLES
    @given(
        task=names,
        stream=names,
        high=st.integers(min_value=0),
        key=st.sampled_from(["v", "task", "kind", "stream", "high", KEY_ID]),
        value=json_values(finite=True),
        position=st.integers(min_value=0),
        signature=st.booleans(),
    )
    def test_a_tampered_heartbeat_is_refused(
        self, task: str, stream: str, high: int, key: str, value: Any, position: int, signature: bool
    ) -> None:
        envelope = wire(heartbeat_envelope(task_name=task, stream=stream, high=high))
        envelope = signature_flipped(envelope, position) if signature else tampered(envelope, key, value)
        with self.assertRaises(Unauthentic):
            envelope_verify(envelope, task=task, kind=HEARTBEAT_KIND)

    @EXAMPLES
    @given(stream=st.none() | json_values(), high=st.none() | json_values())
    def test_a_heartbeat_without_a_stream_and_a_high_is_invalid(self, stream: Any, high: Any) -> None:
        assume(not (isinstance(stream, str) and stream and type(high) is int and high >= 0))
        with self.assertRaises(InvalidEnvelope):
            heartbeat_parse({"v": 1, "kind": "heartbeat", "stream": stream, "high": high})
