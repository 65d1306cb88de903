"""Heartbeats (``reliability.produce.heartbeat``): each stream's high-water mark, a window at a time."""

from unittest import mock

from django.test import TestCase, override_settings

from reliability.exceptions import BrokerUnavailable, PublishNacked
from reliability.models import StreamCounter
from reliability.produce.heartbeat import stream_heartbeat_send

HANDLER = "tests.handler"


@override_settings(RELIABILITY_RELAY_WINDOW=32)
class HeartbeatSendTests(TestCase):
    """Heartbeats leave a window at a time, their confirms collected together (a unit test: the
    broker is a mock here; the soak and the cluster tests send them to a real one)."""

    def setUp(self) -> None:
        for n in range(40):
            StreamCounter.objects.create(stream=f"s{n:02}", last_seq=n + 1, task_name=HANDLER, queue="beans")
        StreamCounter.objects.create(stream="legacy", last_seq=3)  # no owner yet: nobody to tell
        self.publisher = mock.patch("reliability.produce.heartbeat.publisher").start().return_value
        self.addCleanup(mock.patch.stopall)

    def test_one_heartbeat_per_owned_stream_in_windows(self) -> None:
        self.publisher.publish_many.side_effect = lambda items: [None] * len(items)
        self.assertEqual(stream_heartbeat_send(using="default"), 40)
        windows = [call.args[0] for call in self.publisher.publish_many.call_args_list]
        self.assertEqual([len(window) for window in windows], [32, 8])
        self.publisher.publish.assert_not_called()
        highs = {item.envelope["stream"]: item.envelope["high"] for window in windows for item in window}
        self.assertEqual(highs, {f"s{n:02}": n + 1 for n in range(40)})

    def test_a_refused_heartbeat_is_not_counted_and_a_lost_broker_ends_the_round(self) -> None:
        self.publisher.publish_many.side_effect = [
            [PublishNacked("nack"), *[None] * 31],
            BrokerUnavailable("down"),
        ]
        with self.assertLogs("reliability.produce.heartbeat", level="WARNING") as logs:
            self.assertEqual(stream_heartbeat_send(using="default"), 31)
        self.assertIn("heartbeat of stream s00 not published", logs.output[0])
        self.assertIn("heartbeats of 8 streams not published", logs.output[1])
