"""The health console and /metrics show exactly what the database and the broker hold."""

import json
import time
import unittest
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from io import StringIO
from typing import Any
from unittest import mock

from celery import current_app
from django.conf import settings
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.db import transaction
from django.db.models import Sum
from django.test import TestCase, override_settings, tag
from django.urls import reverse
from django.utils import timezone
from kombu import Connection
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from reliability import counters
from reliability.consume import message_log
from reliability.consume.dead_letter import dead_letter_record
from reliability.consume.message_log import message_log_count_redelivery, message_log_insert
from reliability.consume.streams import stream_position_record
from reliability.models import (
    DeadLetter,
    MessageLog,
    OutboxMessage,
    PipelineMode,
    QueueDepth,
    StreamCounter,
    StreamWatermark,
)
from reliability.ops.dead_letters import dead_letter_discard
from reliability.ops.degrade import pipeline_mode_evaluate
from reliability.ops.health import message_log_throughput, pipeline_health
from reliability.ops.queues import queue_depths_record
from reliability.produce.outbox import outbox_enqueue
from reliability.produce.publisher import publisher
from reliability.tasks import evaluate_pipeline_mode

ALPHA, BETA = "tests.health.alpha", "tests.health.beta"
ALPHA_HANDLER, BETA_HANDLER = "tests.health.apply_alpha", "tests.health.apply_beta"


def broker_queue_depth(name: str) -> int:
    """Ask the queue itself (passive declare), independently of the code under test."""
    with Connection(current_app.conf.broker_url) as conn:
        return int(conn.channel().queue_declare(name, passive=True).message_count)


def broker_queue_purge(name: str) -> None:
    with Connection(current_app.conf.broker_url) as conn:
        conn.channel().queue_purge(name)


def metric_samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Parse a Prometheus text exposition into {(sample name, sorted labels): value}."""
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


class HealthPageCells(HTMLParser):
    """Collect the text of every ``data-field`` cell, keyed by its row (stream, queue, handler or id)."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: dict[tuple[str, str], str] = {}
        self.figures: dict[str, str] = {}
        self._row = ""
        self._field = ""
        self._figure = ""
        self._text: list[str] = []
        self.series: list[str] = []
        self.polylines = 0
        self.meta_refresh = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {name: value or "" for name, value in attrs}
        if tag == "tr":
            self._row = (
                a.get("data-stream") or a.get("data-queue") or a.get("data-handler") or a.get("id", "")
            )
        elif tag == "td" and "data-field" in a:
            self._field, self._text = a["data-field"], []
        elif tag == "li" and "data-figure" in a:
            self._figure = a["data-figure"]
        elif tag == "span" and a.get("class") == "value" and self._figure:
            self._text = []
        elif tag == "g" and "data-series" in a:
            self.series.append(a["data-series"])
        elif tag == "polyline" and a.get("points"):
            self.polylines += 1
        elif tag == "meta" and a.get("http-equiv") == "refresh":
            self.meta_refresh = a.get("content", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._field:
            self.cells[(self._row, self._field)] = "".join(self._text).strip()
            self._field = ""
        elif tag == "span" and self._figure and self._figure not in self.figures:
            self.figures[self._figure] = "".join(self._text).strip()
        elif tag == "li":
            self._figure = ""

    def handle_data(self, data: str) -> None:
        self._text.append(data)


def parse_page(html: str) -> HealthPageCells:
    parser = HealthPageCells()
    parser.feed(html)
    return parser


def pipeline_rows_write(test: unittest.TestCase, *, now: datetime) -> dict[str, list[OutboxMessage]]:
    """Write the rows the pipeline would, through the real services; return the outbox rows.

    alpha: 5 produced, the consumer applied 1, 2 and 4 (a gap at 3: watermark 2, lag 3);
    beta: 2 produced, applied 2 then 1 (a gap found and healed: watermark 2, lag 0).
    Every outbox row stays pending when the fast path is off (nothing relays them).
    Dead letters: 2 open for alpha's handler, 1 open and 1 discarded for beta's.
    """
    producer, consumer = "default", settings.BEANS_DATABASE
    with transaction.atomic(using=producer):
        alpha = [
            outbox_enqueue(
                task_name=ALPHA_HANDLER, queue="beans", stream=ALPHA, payload={"n": n}, using=producer
            )
            for n in range(5)
        ]
    with transaction.atomic(using=producer):
        beta = [
            outbox_enqueue(
                task_name=BETA_HANDLER, queue="trades", stream=BETA, payload={"n": n}, using=producer
            )
            for n in range(2)
        ]
    applied = [
        (ALPHA_HANDLER, alpha[0], now - timedelta(minutes=3)),
        (ALPHA_HANDLER, alpha[1], now - timedelta(minutes=3)),
        (ALPHA_HANDLER, alpha[3], now - timedelta(minutes=1)),
        (BETA_HANDLER, beta[1], now),
        (BETA_HANDLER, beta[0], now),
        # Consumed, but outside the 15-minute throughput window.
        ("tests.health.old", None, now - timedelta(minutes=20)),
    ]
    for handler, message, applied_at in applied:
        stream, seq = (message.stream, message.seq) if message else ("tests.health.old", 1)
        message_id = message.message_id if message else uuid.uuid4()
        with (
            transaction.atomic(using=consumer),
            mock.patch.object(message_log.timezone, "now", return_value=applied_at),
        ):
            test.assertTrue(
                message_log_insert(
                    handler=handler, message_id=message_id, stream=stream, seq=seq, using=consumer
                )
            )
        if message:
            with transaction.atomic(using=consumer):
                stream_position_record(handler=handler, stream=stream, seq=seq, using=consumer)
    message_log_count_redelivery(handler=ALPHA_HANDLER, message_id=alpha[0].message_id, using=consumer)

    with test.assertLogs("reliability", level="ERROR"):
        letters = [
            dead_letter_record(
                handler=handler,
                reason=DeadLetter.Reason.HANDLER_FAILED,
                detail="test",
                envelope={},
                message_id=uuid.uuid4(),
                using=consumer,
            )
            for handler in (ALPHA_HANDLER, ALPHA_HANDLER, BETA_HANDLER, BETA_HANDLER)
        ]
    with test.assertLogs("reliability", level="INFO"):
        dead_letter_discard(letter_id=letters[-1].pk, reason="test data", using=consumer)
    return {"alpha": alpha, "beta": beta}


class FixedCollector:
    """What a domain app's collector looks like (``settings.METRICS_COLLECTORS``)."""

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("beans_trades", "Trades by status.", labels=["status"])
        family.add_metric(["pending"], 2)
        yield family


class HealthTestCase(TestCase):
    databases = "__all__"

    def setUp(self) -> None:
        self.now = timezone.now()
        pipeline_rows_write(self, now=self.now)


@override_settings(RELIABILITY_RELAY_FAST_PATH=False)
class HealthFiguresTests(HealthTestCase):
    def test_streams_show_produced_watermark_lag_gaps_and_pending_outbox(self) -> None:
        health = pipeline_health()
        streams = {row["stream"]: row for row in health["streams"]}

        self.assertEqual(
            {key: streams[ALPHA][key] for key in ("produced_seq", "consumed_watermark", "lag", "gaps_open")},
            {"produced_seq": 5, "consumed_watermark": 2, "lag": 3, "gaps_open": 1},
        )
        self.assertEqual(
            {key: streams[BETA][key] for key in ("produced_seq", "consumed_watermark", "lag", "gaps_healed")},
            {"produced_seq": 2, "consumed_watermark": 2, "lag": 0, "gaps_healed": 1},
        )
        for stream in (ALPHA, BETA):
            with self.subTest(stream=stream):
                counter = StreamCounter.objects.get(stream=stream)
                watermark = StreamWatermark.objects.using(settings.BEANS_DATABASE).get(stream=stream)
                pending = OutboxMessage.objects.filter(stream=stream, status=OutboxMessage.Status.PENDING)
                oldest = min(message.created_at for message in pending)
                row = streams[stream]
                self.assertEqual(row["produced_seq"], counter.last_seq)
                self.assertEqual(row["consumed_watermark"], watermark.watermark)
                self.assertEqual(row["lag"], counter.last_seq - watermark.watermark)
                self.assertEqual(
                    (row["gaps_open"], row["gaps_healed"]), (watermark.gaps_open, watermark.gaps_healed)
                )
                self.assertEqual(row["outbox_pending"], pending.count())
                expected_age = (health["generated_at"] - oldest).total_seconds()
                self.assertAlmostEqual(row["outbox_oldest_pending_age_s"], expected_age, delta=0.002)
        self.assertEqual(health["totals"]["outbox_pending"], 7)
        self.assertEqual(health["totals"]["lag"], 3)

    def test_totals_and_dead_letters_match_the_database(self) -> None:
        health = pipeline_health()
        log = MessageLog.objects.using(settings.BEANS_DATABASE)

        self.assertEqual(health["totals"]["consumed"], log.count())
        self.assertEqual(health["totals"]["consumed"], 6)
        self.assertEqual(health["totals"]["duplicates_suppressed"], log.aggregate(n=Sum("redeliveries"))["n"])
        self.assertEqual(health["totals"]["duplicates_suppressed"], 1)
        self.assertEqual(health["dead_letters_open_by_handler"], {ALPHA_HANDLER: 2, BETA_HANDLER: 1})
        self.assertEqual(
            health["totals"]["dead_letters_open"],
            DeadLetter.objects.using(settings.BEANS_DATABASE).filter(status=DeadLetter.Status.OPEN).count(),
        )
        self.assertEqual(health["totals"]["gaps_escalated"], 0)

    def test_throughput_counts_each_minute_per_handler_and_fills_empty_minutes(self) -> None:
        throughput = message_log_throughput(now=self.now)

        minute = self.now.astimezone(UTC).replace(second=0, microsecond=0)
        self.assertEqual(throughput["minutes"], [minute - timedelta(minutes=14 - i) for i in range(15)])
        alpha, beta = [0] * 15, [0] * 15
        alpha[11], alpha[13], beta[14] = 2, 1, 2
        self.assertEqual(throughput["by_handler"], {ALPHA_HANDLER: alpha, BETA_HANDLER: beta})
        self.assertEqual(throughput["total"], [a + b for a, b in zip(alpha, beta, strict=True)])

    def test_throughput_of_an_empty_window_is_all_zeros(self) -> None:
        throughput = message_log_throughput(now=self.now + timedelta(hours=1))
        self.assertEqual(throughput["by_handler"], {})
        self.assertEqual(throughput["total"], [0] * 15)


@override_settings(RELIABILITY_RELAY_FAST_PATH=False)
class HealthPageTests(HealthTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.url = reverse("pipeline-health")
        self.staff = User.objects.create_user("operator", password=None, is_staff=True)

    def test_anonymous_and_non_staff_users_are_sent_to_the_login(self) -> None:
        login = reverse("admin:login")
        self.assertRedirects(self.client.get(self.url), f"{login}?next={self.url}")
        self.client.force_login(User.objects.create_user("customer", password=None))
        self.assertRedirects(self.client.get(self.url), f"{login}?next={self.url}")

    def test_staff_see_each_stream_with_the_figures_the_database_holds(self) -> None:
        self.client.force_login(self.staff)
        response = self.client.get(self.url)

        self.assertEqual(response.status_code, 200)
        self.assertTemplateUsed(response, "admin/base_site.html")
        page = parse_page(response.content.decode())
        for stream in (ALPHA, BETA):
            counter = StreamCounter.objects.get(stream=stream)
            watermark = StreamWatermark.objects.using(settings.BEANS_DATABASE).get(stream=stream)
            pending = OutboxMessage.objects.filter(stream=stream, status=OutboxMessage.Status.PENDING).count()
            with self.subTest(stream=stream):
                self.assertEqual(page.cells[(stream, "produced_seq")], str(counter.last_seq))
                self.assertEqual(page.cells[(stream, "consumed_watermark")], str(watermark.watermark))
                self.assertEqual(page.cells[(stream, "lag")], str(counter.last_seq - watermark.watermark))
                self.assertEqual(page.cells[(stream, "gaps_open")], str(watermark.gaps_open))
                self.assertEqual(page.cells[(stream, "gaps_healed")], str(watermark.gaps_healed))
                self.assertEqual(page.cells[(stream, "outbox_pending")], str(pending))
        self.assertEqual(page.cells[(ALPHA, "lag")], "3")
        self.assertEqual(page.cells[("health-streams-total", "outbox_pending")], "7")
        self.assertEqual(page.figures["outbox_pending"], "7")
        self.assertEqual(page.figures["consumed"], "6")
        self.assertEqual(page.figures["duplicates_suppressed"], "1")
        self.assertEqual(page.figures["dead_letters_open"], "3")
        self.assertEqual(page.cells[(ALPHA_HANDLER, "open")], "2")
        self.assertEqual(page.cells[(BETA_HANDLER, "open")], "1")

    def test_page_refreshes_itself_and_draws_throughput_as_server_side_svg(self) -> None:
        self.client.force_login(self.staff)
        response = self.client.get(self.url)
        html = response.content.decode()
        page = parse_page(html)

        self.assertEqual(page.meta_refresh, "10")
        self.assertIn("<svg", html)
        self.assertNotIn("<script", html.split('<div id="content"', 1)[1])  # no chart library
        self.assertEqual(page.series, ["all handlers", ALPHA_HANDLER, BETA_HANDLER])
        self.assertEqual(page.polylines, 3)
        # The figures behind the chart are the message log's, minute by minute.
        health = response.context["health"]
        expected: dict[str, list[int]] = {}
        for row in MessageLog.objects.using(settings.BEANS_DATABASE).all():
            minute = row.applied_at.astimezone(UTC).replace(second=0, microsecond=0)
            if minute in health["throughput"]["minutes"]:
                counts = expected.setdefault(row.handler, [0] * 15)
                counts[health["throughput"]["minutes"].index(minute)] += 1
        self.assertEqual(health["throughput"]["by_handler"], expected)
        self.assertEqual(sum(map(sum, expected.values())), 5)
        self.assertContains(response, f"{ALPHA_HANDLER}: 3 in 15 min")
        self.assertContains(response, f"{BETA_HANDLER}: 2 in 15 min")

    @override_settings(RELIABILITY_DEGRADE_LAG_MESSAGES=3)
    def test_page_and_metrics_show_degrade_mode(self) -> None:
        self.client.force_login(self.staff)
        page = parse_page(self.client.get(self.url).content.decode())
        samples = metric_samples(self.client.get(reverse("metrics")).content)
        self.assertEqual(page.figures["mode"], "normal")
        self.assertEqual(samples[("beans_pipeline_degraded", ())], 0)

        with self.assertLogs("reliability.ops.degrade", level="WARNING"):
            mode = pipeline_mode_evaluate()  # lag 3 reaches the threshold
        self.assertTrue(mode.degraded)

        response = self.client.get(self.url)
        samples = metric_samples(self.client.get(reverse("metrics")).content)
        self.assertEqual(parse_page(response.content.decode()).figures["mode"], "degraded")
        self.assertContains(response, mode.reason)
        self.assertEqual(samples[("beans_pipeline_degraded", ())], 1)

    def test_admin_index_links_the_health_page(self) -> None:
        self.client.force_login(self.staff)
        self.assertContains(self.client.get(reverse("admin:index")), f'href="{self.url}"')


@tag("broker")
class HealthQueueDepthTests(TestCase):
    databases = "__all__"

    def setUp(self) -> None:
        publisher().topology_declare()
        broker_queue_purge("beans")
        self.addCleanup(broker_queue_purge, "beans")
        self.staff = User.objects.create_user("operator", password=None, is_staff=True)

    def test_page_and_metrics_show_the_depth_the_broker_reports(self) -> None:
        message_id = str(uuid.uuid4())
        publisher().publish(
            task_name="tests.health.noop",
            queue="beans",
            message_id=message_id,
            envelope={"v": 1, "message_id": message_id, "stream": "tests.depth", "seq": 1, "payload": {}},
        )
        deadline = time.monotonic() + 5
        while broker_queue_depth("beans") != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(broker_queue_depth("beans"), 1)
        queue_depths_record()  # what beat does every few seconds (evaluate_pipeline_mode)

        self.client.force_login(self.staff)
        # Neither the page nor a scrape opens a broker connection: they read what beat recorded.
        with mock.patch("reliability.selectors.broker_connection", side_effect=AssertionError("broker")):
            page = parse_page(self.client.get(reverse("pipeline-health")).content.decode())
            samples = metric_samples(self.client.get(reverse("metrics")).content)

        self.assertEqual(page.cells[("beans", "depth")], "1")
        self.assertEqual(samples[("beans_queue_depth_messages", (("queue", "beans"),))], 1.0)
        self.assertEqual(page.cells[("trades", "depth")], str(broker_queue_depth("trades")))
        self.assertLess(samples[("beans_queue_depth_age_seconds", ())], 5)

    def test_the_beat_task_records_the_depths_after_evaluating_the_mode(self) -> None:
        evaluate_pipeline_mode()
        recorded = QueueDepth.objects.get(queue="beans")
        self.assertEqual(recorded.messages, 0)
        self.assertLess((timezone.now() - recorded.observed_at).total_seconds(), 5)
        self.assertTrue(PipelineMode.objects.filter(key="pipeline").exists())


@override_settings(RELIABILITY_RELAY_FAST_PATH=False)
class MetricsTests(HealthTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.url = reverse("metrics")

    def test_metrics_are_the_figures_the_database_holds(self) -> None:
        response = self.client.get(self.url)

        self.assertEqual(response.status_code, 200)
        self.assertEqual(response["Content-Type"], "text/plain; version=0.0.4; charset=utf-8")
        samples = metric_samples(response.content)
        for stream in (ALPHA, BETA):
            counter = StreamCounter.objects.get(stream=stream)
            watermark = StreamWatermark.objects.using(settings.BEANS_DATABASE).get(stream=stream)
            labels = (("stream", stream),)
            with self.subTest(stream=stream):
                self.assertEqual(samples[("beans_stream_produced_seq", labels)], counter.last_seq)
                self.assertEqual(samples[("beans_stream_consumed_watermark", labels)], watermark.watermark)
                self.assertEqual(
                    samples[("beans_stream_lag_messages", labels)], counter.last_seq - watermark.watermark
                )
                self.assertEqual(samples[("beans_stream_gaps_open", labels)], watermark.gaps_open)
        self.assertEqual(samples[("beans_stream_lag_messages", (("stream", ALPHA),))], 3)
        pending = OutboxMessage.objects.filter(status=OutboxMessage.Status.PENDING)
        self.assertEqual(samples[("beans_outbox_pending_messages", ())], pending.count())
        self.assertEqual(samples[("beans_outbox_pending_messages", ())], 7)
        oldest = min(message.created_at for message in pending)
        self.assertAlmostEqual(
            samples[("beans_outbox_oldest_pending_age_seconds", ())],
            (timezone.now() - oldest).total_seconds(),
            delta=5,
        )
        log = MessageLog.objects.using(settings.BEANS_DATABASE)
        self.assertEqual(samples[("beans_messages_consumed_total", ())], log.count())
        self.assertEqual(
            samples[("beans_duplicates_suppressed_total", ())], log.aggregate(n=Sum("redeliveries"))["n"]
        )
        self.assertEqual(samples[("beans_dead_letters_open", ())], 3)
        self.assertIn(b"# TYPE beans_messages_consumed_total counter", response.content)
        self.assertIn(b"# TYPE beans_stream_lag_messages gauge", response.content)

    def test_pipeline_event_counters_are_shown_per_event(self) -> None:
        self.assertNotIn(b"beans_pipeline_events_total{", self.client.get(self.url).content)
        counters.pipeline_counter_add(name="housekeeping_expired_dropped")
        counters.pipeline_counter_add(name="housekeeping_expired_dropped", by=2)

        response = self.client.get(self.url)

        samples = metric_samples(response.content)
        self.assertEqual(
            samples[("beans_pipeline_events_total", (("event", "housekeeping_expired_dropped"),))], 3
        )
        self.assertIn(b"# TYPE beans_pipeline_events_total counter", response.content)

    def test_each_scrape_reads_afresh(self) -> None:
        first = metric_samples(self.client.get(self.url).content)
        with transaction.atomic():
            outbox_enqueue(task_name=ALPHA_HANDLER, queue="beans", stream=ALPHA, payload={})
        second = metric_samples(self.client.get(self.url).content)

        self.assertEqual(first[("beans_outbox_pending_messages", ())], 7)
        self.assertEqual(second[("beans_outbox_pending_messages", ())], 8)
        self.assertEqual(second[("beans_stream_lag_messages", (("stream", ALPHA),))], 4)

    @override_settings(METRICS_COLLECTORS=["tests.reliability.ops.test_health.FixedCollector"])
    def test_collectors_named_in_settings_add_their_figures(self) -> None:
        samples = metric_samples(self.client.get(self.url).content)
        self.assertEqual(samples[("beans_trades", (("status", "pending"),))], 2)
        self.assertEqual(samples[("beans_outbox_pending_messages", ())], 7)

    def test_unknown_queue_depths_are_left_out(self) -> None:
        with mock.patch(
            "reliability.ops.queues.queue_depths", return_value={"beans": None, "trades": 4, "gone": 7}
        ):
            queue_depths_record()
        samples = metric_samples(self.client.get(self.url).content)
        self.assertNotIn(("beans_queue_depth_messages", (("queue", "beans"),)), samples)
        self.assertEqual(samples[("beans_queue_depth_messages", (("queue", "trades"),))], 4)
        self.assertNotIn(("beans_queue_depth_messages", (("queue", "gone"),)), samples, "not a project queue")

    def test_queue_depths_never_read_or_read_too_long_ago_are_left_out(self) -> None:
        samples = metric_samples(self.client.get(self.url).content)
        self.assertFalse([key for key in samples if key[0] == "beans_queue_depth_messages"], "never read")
        self.assertNotIn(("beans_queue_depth_age_seconds", ()), samples)

        with mock.patch("reliability.ops.queues.queue_depths", return_value={"trades": 4}):
            queue_depths_record()
        QueueDepth.objects.update(observed_at=timezone.now() - timedelta(seconds=61))
        with override_settings(RELIABILITY_QUEUE_DEPTH_MAX_AGE_S=60):
            samples = metric_samples(self.client.get(self.url).content)
        self.assertNotIn(("beans_queue_depth_messages", (("queue", "trades"),)), samples)
        self.assertAlmostEqual(samples[("beans_queue_depth_age_seconds", ())], 61, delta=5)


class MetricsAccessTests(TestCase):
    databases = "__all__"
    url = "/metrics"

    def get(self, *, remote: str = "127.0.0.1", authorization: str | None = None) -> Any:
        headers = {"Authorization": authorization} if authorization is not None else {}
        return self.client.get(self.url, headers=headers, REMOTE_ADDR=remote)

    @override_settings(METRICS_TOKEN="s3cret-token")
    def test_with_a_token_a_request_without_it_is_unauthorized(self) -> None:
        with self.assertLogs("django.request", level="WARNING"):
            response = self.get()
        self.assertEqual(response.status_code, 401)
        self.assertEqual(response["WWW-Authenticate"], 'Bearer realm="metrics"')
        self.assertNotIn(b"beans_", response.content)

    @override_settings(METRICS_TOKEN="s3cret-token")
    def test_with_a_token_a_wrong_token_or_scheme_is_unauthorized(self) -> None:
        for header in ("Bearer wrong", "Bearer s3cret-toke", "Basic s3cret-token", "s3cret-token", "Bearer "):
            with self.subTest(header=header), self.assertLogs("django.request", level="WARNING"):
                self.assertEqual(self.get(authorization=header).status_code, 401)

    @override_settings(METRICS_TOKEN="s3cret-token")
    def test_with_a_token_the_right_bearer_token_is_served_from_anywhere(self) -> None:
        for remote in ("127.0.0.1", "10.1.2.3"):
            with self.subTest(remote=remote):
                response = self.get(authorization="Bearer s3cret-token", remote=remote)
                self.assertEqual(response.status_code, 200)
                self.assertIn(b"beans_outbox_pending_messages 0.0", response.content)
        self.assertEqual(self.get(authorization="bearer s3cret-token").status_code, 200)

    @override_settings(METRICS_TOKEN="")
    def test_without_a_token_remote_clients_are_forbidden_before_any_query(self) -> None:
        for remote in ("10.1.2.3", "192.168.0.7", "2001:db8::1", "::ffff:10.1.2.3", "not-an-address", ""):
            with (
                self.subTest(remote=remote),
                self.assertLogs("django.request", level="WARNING"),
                self.assertNumQueries(0),
            ):
                self.assertEqual(self.get(remote=remote).status_code, 403)

    @override_settings(METRICS_TOKEN="")
    def test_without_a_token_loopback_clients_are_served(self) -> None:
        for remote in ("127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"):
            with self.subTest(remote=remote):
                self.assertEqual(self.get(remote=remote).status_code, 200)

    def test_only_get_is_allowed(self) -> None:
        with self.assertLogs("django.request", level="WARNING"):
            self.assertEqual(self.client.post(self.url).status_code, 405)


@override_settings(RELIABILITY_RELAY_FAST_PATH=False)
class PipelineStatusWatchTests(HealthTestCase):
    def test_json_watch_prints_one_json_line_per_interval(self) -> None:
        out = StringIO()
        call_command("pipeline_status", "--json", "--watch", "--count", "2", "--interval", "0.01", stdout=out)

        lines = out.getvalue().splitlines()
        self.assertEqual(len(lines), 2)
        for line in lines:
            status = json.loads(line)
            for key in (
                "trades",
                "outbox_pending",
                "outbox_oldest_pending_age_s",
                "consumed",
                "duplicates_suppressed",
                "dead_letters",
                "streams",
            ):
                self.assertIn(key, status)
            streams = {row["stream"]: row for row in status["streams"]}
            self.assertEqual(
                {
                    key: streams[ALPHA][key]
                    for key in ("produced_seq", "consumed_watermark", "lag", "gaps_open")
                },
                {"produced_seq": 5, "consumed_watermark": 2, "lag": 3, "gaps_open": 1},
            )
            self.assertEqual(streams[BETA]["gaps_healed"], 1)
            self.assertEqual(status["outbox_pending"], 7)

    def test_table_shows_each_streams_lag(self) -> None:
        out = StringIO()
        call_command("pipeline_status", stdout=out)

        header, *rows = out.getvalue().split("\n\n", 1)[1].splitlines()
        self.assertEqual(header.split()[:4], ["stream", "produced", "watermark", "lag"])
        alpha = next(row.split() for row in rows if row.startswith(ALPHA))
        self.assertEqual(alpha[:4], [ALPHA, "5", "2", "3"])

    def test_watch_redraws_the_table_count_times(self) -> None:
        out = StringIO()
        call_command("pipeline_status", "--watch", "--count", "3", "--interval", "0.01", stdout=out)
        self.assertEqual(out.getvalue().count("pipeline status at "), 3)

    def test_count_without_watch_and_bad_intervals_are_refused(self) -> None:
        with self.assertRaisesMessage(CommandError, "--count needs --watch"):
            call_command("pipeline_status", "--count", "2")
        for interval in ("0", "-1", "soon", "nan", "inf"):
            with self.subTest(interval=interval), self.assertRaises(CommandError):
                call_command("pipeline_status", "--watch", "--interval", interval)
