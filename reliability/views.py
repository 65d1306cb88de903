"""The pipeline's health, for people (an admin page) and for Prometheus (``/metrics``).

Both only read (``reliability.ops.health``) and shape the answer. ``/metrics`` is
protected as a deployer expects: with ``settings.METRICS_TOKEN`` set it wants
``Authorization: Bearer <token>`` (401 otherwise); without one it answers only
loopback clients (403 otherwise), so an exporter is never public by accident.
"""

import ipaddress
import secrets
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

from django.contrib import admin
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.module_loading import import_string
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from reliability.conf import settings
from reliability.ops.health import pipeline_health, pipeline_mode_state, readiness, stream_health
from reliability.selectors import (
    dead_letter_open_count,
    message_log_stats,
    outbox_pending_stats,
    pipeline_counters,
    queue_depths_recorded,
)

HEALTH_REFRESH_S = 10

# --- Admin page: "Pipeline health" ------------------------------------------------------------

_CHART_WIDTH, _CHART_HEIGHT = 720, 260
_CHART_LEFT, _CHART_RIGHT, _CHART_TOP, _CHART_BOTTOM = 52, 16, 16, 40
# Colour-blind-safe (Okabe-Ito); the total is drawn in the admin's text colour.
_CHART_COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#F0E442")


def _chart_top_value(peak: int) -> int:
    """Round ``peak`` up to 1, 2 or 5 times a power of ten (at least 1), for an even y axis."""
    scale = 1
    while True:
        for step in (1, 2, 5):
            if peak <= step * scale:
                return step * scale
        scale *= 10


def _throughput_chart(throughput: dict[str, Any]) -> dict[str, Any]:
    """Lay out the per-minute throughput as SVG coordinates (the template draws them)."""
    minutes: Sequence[datetime] = throughput["minutes"]
    named = [("all handlers", throughput["total"], "currentColor")]
    named += [
        (handler, counts, _CHART_COLOURS[i % len(_CHART_COLOURS)])
        for i, (handler, counts) in enumerate(throughput["by_handler"].items())
    ]
    top = _chart_top_value(max(throughput["total"], default=0))
    plot_w = _CHART_WIDTH - _CHART_LEFT - _CHART_RIGHT
    plot_h = _CHART_HEIGHT - _CHART_TOP - _CHART_BOTTOM
    step = plot_w / max(len(minutes) - 1, 1)

    def x(i: int) -> float:
        return round(_CHART_LEFT + i * step, 1)

    def y(value: float) -> float:
        return round(_CHART_TOP + plot_h - value / top * plot_h, 1)

    series = []
    for name, counts, colour in named:
        dots = [
            {"x": x(i), "y": y(n), "value": n, "minute": minutes[i].strftime("%H:%M")}
            for i, n in enumerate(counts)
        ]
        series.append(
            {
                "name": name,
                "colour": colour,
                "points": " ".join(f"{dot['x']},{dot['y']}" for dot in dots),
                "dots": dots,
                "sum": sum(counts),
            }
        )
    ticks = sorted({0, top // 2, top}) if top >= 2 else [0, top]
    last = len(minutes) - 1
    return {
        "width": _CHART_WIDTH,
        "height": _CHART_HEIGHT,
        "left": _CHART_LEFT,
        "right": _CHART_WIDTH - _CHART_RIGHT,
        "top": _CHART_TOP,
        "bottom": _CHART_TOP + plot_h,
        "y_ticks": [{"y": y(value), "label": value} for value in ticks],
        "x_ticks": [
            {"x": x(i), "label": minutes[i].strftime("%H:%M")}
            for i in range(len(minutes))
            if (last - i) % 5 == 0
        ],
        "series": series,
        "rows": [
            {"minute": minute.strftime("%H:%M"), "counts": [row["dots"][i]["value"] for row in series]}
            for i, minute in enumerate(minutes)
        ],
    }


def pipeline_health_page(request: HttpRequest) -> TemplateResponse:
    """Show the pipeline's health to staff; route it through ``admin.site.admin_view``."""
    health = pipeline_health()
    context = {
        **admin.site.each_context(request),
        "title": "Pipeline health",
        "health": health,
        "chart": _throughput_chart(health["throughput"]),
        "refresh_s": HEALTH_REFRESH_S,
    }
    return TemplateResponse(request, "reliability/pipeline_health.html", context)


# --- /metrics (Prometheus) ----------------------------------------------------------------------


class PipelineHealthCollector:
    """Read the health figures when scraped: no metric state lives between requests.

    A scrape costs the same however long the history: the message log's figures come from its
    counters, the outbox, dead letters and streams from indexes on what is pending or open,
    and queue depths from what beat recorded (no broker connection).
    """

    def __init__(self, prefix: str = "reliability") -> None:
        self.prefix = prefix

    def _name(self, name: str) -> str:
        return f"{self.prefix}_{name}"

    def collect(self) -> Iterator[Metric]:
        streams = stream_health()
        per_stream = {
            "stream_produced_seq": (
                "Last sequence number the producer handed out on the stream.",
                "produced_seq",
            ),
            "stream_consumed_watermark": (
                "Highest seq up to which the consumer applied (or dead-lettered) every message.",
                "consumed_watermark",
            ),
            "stream_lag_messages": ("Produced seq minus consumed watermark.", "lag"),
            "stream_gaps_open": (
                "Missing seqs the consumer has not received yet (open or escalated).",
                "gaps_open",
            ),
        }
        for name, (documentation, key) in per_stream.items():
            family = GaugeMetricFamily(self._name(name), documentation, labels=["stream"])
            for row in streams:
                if row[key] is not None:
                    family.add_metric([row["stream"]], row[key])
            yield family

        outbox = outbox_pending_stats()
        yield GaugeMetricFamily(
            self._name("outbox_pending_messages"),
            "Outbox messages not yet confirmed by the broker.",
            value=outbox["outbox_pending"],
        )
        yield GaugeMetricFamily(
            self._name("outbox_oldest_pending_age_seconds"),
            "Age of the oldest pending outbox message (0 when none is pending).",
            value=outbox["outbox_oldest_pending_age_s"],
        )
        log = message_log_stats()
        # Rows now: these two drop when retention purges (their meaning since 0.1.0). The
        # "ever" counters below never drop. All read from counters, never by counting the log.
        yield CounterMetricFamily(
            self._name("messages_consumed_total"),
            "Messages applied: message-log rows now (drops when retention deletes old rows; "
            "message_log_inserted_total does not).",
            value=log["consumed"],
        )
        yield CounterMetricFamily(
            self._name("duplicates_suppressed_total"),
            "Duplicate deliveries recognised and skipped, recorded on the message-log rows now "
            "(drops with retention; duplicate_deliveries_total does not).",
            value=log["duplicates_suppressed"],
        )
        yield CounterMetricFamily(
            self._name("message_log_inserted_total"),
            "Message-log rows ever inserted: messages applied (never drops).",
            value=log["consumed_ever"],
        )
        yield CounterMetricFamily(
            self._name("message_log_purged_total"),
            "Message-log rows ever deleted by retention.",
            value=log["purged"],
        )
        yield CounterMetricFamily(
            self._name("duplicate_deliveries_total"),
            "Duplicate deliveries ever recognised and skipped (never drops).",
            value=log["duplicates_suppressed_ever"],
        )
        yield GaugeMetricFamily(
            self._name("dead_letters_open"),
            "Dead letters waiting for a replay or a discard.",
            value=dead_letter_open_count(),
        )
        events = CounterMetricFamily(
            self._name("pipeline_events"),
            "Events counted but not kept row by row (PipelineCounter), e.g. housekeeping_expired_dropped: "
            "periodic tasks that expired in their queue and were dropped.",
            labels=["event"],
        )
        for event, count in pipeline_counters().items():
            events.add_metric([event], count)
        yield events
        yield GaugeMetricFamily(
            self._name("pipeline_degraded"),
            "1 while the pipeline is in degrade mode (a backlog: non-critical work is shed), else 0.",
            value=int(pipeline_mode_state()["degraded"]),
        )
        recorded = queue_depths_recorded()
        depths = GaugeMetricFamily(
            self._name("queue_depth_messages"),
            "Ready messages in the broker queue, as beat last read them (a queue whose depth is "
            "unknown, or older than RELIABILITY_QUEUE_DEPTH_MAX_AGE_S, is left out).",
            labels=["queue"],
        )
        for queue, depth in recorded["depths"].items():
            if depth is not None:
                depths.add_metric([queue], depth)
        yield depths
        if recorded["read_at"] is not None:
            yield GaugeMetricFamily(
                self._name("queue_depth_age_seconds"),
                "Seconds since the queue depths were last read from the broker.",
                value=max((timezone.now() - recorded["read_at"]).total_seconds(), 0.0),
            )


def _metrics_collectors() -> Iterable[Any]:
    yield PipelineHealthCollector(prefix=getattr(settings, "METRICS_PREFIX", "reliability"))
    # Domain apps add their own figures without this app importing them.
    for path in getattr(settings, "METRICS_COLLECTORS", ()):
        yield import_string(path)()


def _client_is_loopback(request: HttpRequest) -> bool:
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _metrics_refusal(request: HttpRequest) -> HttpResponse | None:
    """Return the 401 or 403 answer for a request that may not read the metrics, else None."""
    token = getattr(settings, "METRICS_TOKEN", "")
    if token:
        scheme, _, supplied = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and secrets.compare_digest(
            supplied.strip().encode(), str(token).encode()
        ):
            return None
        response = HttpResponse("401 Unauthorized: send Authorization: Bearer <METRICS_TOKEN>\n", status=401)
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    if _client_is_loopback(request):
        return None
    return HttpResponse(
        "403 Forbidden: /metrics answers loopback only unless METRICS_TOKEN is set\n", status=403
    )


@never_cache
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """Serve the health figures in the Prometheus text format (0.0.4)."""
    refusal = _metrics_refusal(request)
    if refusal is not None:
        refusal["Content-Type"] = "text/plain; charset=utf-8"
        return refusal
    registry = CollectorRegistry(auto_describe=False)
    for collector in _metrics_collectors():
        registry.register(collector)
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_PLAIN_0_0_4)


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: the process answers (no database, no broker: a restart would not fix those)."""
    return JsonResponse({"status": "ok"})


@never_cache
@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness: 200 when the databases and the broker are reachable, else 503 naming what is not."""
    problems = readiness()
    if problems:
        return JsonResponse({"status": "unavailable", "failing": problems}, status=503)
    return JsonResponse({"status": "ok"})
