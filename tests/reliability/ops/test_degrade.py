"""Degrade mode: entered and left on lag thresholds, sheds non-critical work only."""

from datetime import timedelta

from django.db import transaction
from django.test import TestCase, override_settings
from django.utils import timezone

from beans.services import account_create
from reliability.consume.streams import stream_position_record
from reliability.models import OutboxMessage, PipelineMode
from reliability.ops import degrade
from reliability.produce.outbox import outbox_enqueue
from reliability.tasks import purge_old_rows
from tests.api import client_authenticate


def enqueue(count: int, stream: str = "s") -> None:
    with transaction.atomic():
        for _ in range(count):
            outbox_enqueue(task_name="tests.handler", queue="beans", stream=stream, payload={})


@override_settings(RELIABILITY_DEGRADE_OUTBOX_AGE_S=30, RELIABILITY_DEGRADE_LAG_MESSAGES=10)
class DegradeModeTests(TestCase):
    def setUp(self) -> None:
        degrade._cache.clear()

    def test_no_lag_is_normal(self) -> None:
        self.assertFalse(degrade.pipeline_mode_evaluate().degraded)

    def test_an_old_unpublished_message_enters_degrade_mode_and_publishing_it_leaves(self) -> None:
        enqueue(1)
        OutboxMessage.objects.update(created_at=timezone.now() - timedelta(seconds=60))
        with self.assertLogs("reliability.ops.degrade", level="WARNING"):
            mode = degrade.pipeline_mode_evaluate()
        self.assertTrue(mode.degraded)
        self.assertIn("oldest unpublished message", mode.reason)
        OutboxMessage.objects.update(status=OutboxMessage.Status.SENT, sent_at=timezone.now())
        with self.assertLogs("reliability.ops.degrade", level="INFO"):
            self.assertFalse(degrade.pipeline_mode_evaluate().degraded)

    def test_consumer_lag_uses_hysteresis(self) -> None:
        enqueue(12)
        OutboxMessage.objects.update(status=OutboxMessage.Status.SENT, sent_at=timezone.now())
        with transaction.atomic():
            stream_position_record(handler="tests.handler", stream="s", seq=1)
        self.assertTrue(degrade.pipeline_mode_evaluate().degraded, "11 behind, limit 10")
        with transaction.atomic():
            for seq in range(2, 7):
                stream_position_record(handler="tests.handler", stream="s", seq=seq)
        self.assertTrue(degrade.pipeline_mode_evaluate().degraded, "6 behind: above half the limit, stays")
        with transaction.atomic():
            for seq in range(7, 9):
                stream_position_record(handler="tests.handler", stream="s", seq=seq)
        self.assertFalse(degrade.pipeline_mode_evaluate().degraded, "4 behind: below half, leaves")


class DegradedApiTests(TestCase):
    def setUp(self) -> None:
        client_authenticate(self.client)
        degrade._cache.clear()
        self.addCleanup(degrade._cache.clear)  # the degraded mode must not outlive this test
        self.account = account_create(owner="a", balance=1000).pk
        PipelineMode.objects.create(
            key="pipeline", degraded=True, reason="test backlog", consumer_lag_messages=99
        )

    def test_trades_are_still_accepted_and_told_the_lag(self) -> None:
        response = self.client.post(
            "/api/trades/", data={"account": self.account, "beans": 10}, content_type="application/json"
        )
        self.assertEqual(response.status_code, 201)
        self.assertEqual(response["X-Pipeline-Degraded"], "1")
        self.assertEqual(response.json()["pipeline"]["lag"]["consumer_lag_messages"], 99)

    def test_non_critical_requests_are_refused_with_retry_after(self) -> None:
        response = self.client.get(f"/api/accounts/{self.account}/trades/")
        self.assertEqual(response.status_code, 503)
        self.assertIn("Retry-After", response)
        self.assertIn("backlog", response.json()["error"])

    def test_non_critical_requests_are_served_when_normal(self) -> None:
        PipelineMode.objects.update(degraded=False)
        degrade._cache.clear()
        self.assertEqual(self.client.get(f"/api/accounts/{self.account}/trades/").status_code, 200)

    def test_retention_is_deferred_while_degraded_but_partitions_ahead_are_made(self) -> None:
        results = purge_old_rows()
        self.assertTrue(results)
        for counts in results.values():
            self.assertEqual(counts["partitions_dropped"], 0)
            self.assertEqual(set(counts), {"partitions_dropped", "partitions_made", "partitions_failed"})
