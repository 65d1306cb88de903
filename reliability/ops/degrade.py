"""Degrade mode: under a backlog, keep accepting critical work and shed the rest.

A backlog (consumers behind, or the broker refusing publishes so the outbox
grows) must slow things down, never lose anything. ``pipeline_mode_evaluate``
(beat) compares the lag with thresholds and records the mode, with hysteresis:
it enters at the threshold and leaves below half of it. Views marked
``non_critical`` answer 503 with ``Retry-After`` while degraded; tasks check
``pipeline_degraded()`` to defer themselves. Entering and leaving are logged.
"""

import functools
import logging
import time
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone

from reliability.conf import settings
from reliability.models import PipelineMode
from reliability.selectors import outbox_pending_stats, stream_positions

logger = logging.getLogger(__name__)

_cache: dict[str, tuple[float, PipelineMode]] = {}
_CACHE_S = 1.0


def pipeline_lag() -> dict[str, float]:
    """Return the two lag figures: the oldest unpublished message's age, and messages not yet applied."""
    stats = outbox_pending_stats()
    lag = sum(max(position["lag"] or 0, 0) for position in stream_positions())
    return {"outbox_oldest_pending_age_s": stats["outbox_oldest_pending_age_s"], "consumer_lag_messages": lag}


def pipeline_mode_evaluate() -> PipelineMode:
    """Measure the lag, enter or leave degrade mode, and record it."""
    lag = pipeline_lag()
    age_limit = settings.RELIABILITY_DEGRADE_OUTBOX_AGE_S
    lag_limit = settings.RELIABILITY_DEGRADE_LAG_MESSAGES
    mode, _ = PipelineMode.objects.get_or_create(key="pipeline")
    over = lag["outbox_oldest_pending_age_s"] >= age_limit or lag["consumer_lag_messages"] >= lag_limit
    clear = (
        lag["outbox_oldest_pending_age_s"] < age_limit / 2 and lag["consumer_lag_messages"] < lag_limit / 2
    )
    now = timezone.now()
    if not mode.degraded and over:
        mode.degraded, mode.changed_at = True, now
        mode.reason = (
            f"oldest unpublished message {lag['outbox_oldest_pending_age_s']:.0f}s old (limit {age_limit:g}s), "
            f"{lag['consumer_lag_messages']:.0f} messages not yet applied (limit {lag_limit})"
        )
        logger.warning("entering degrade mode: %s", mode.reason)
    elif mode.degraded and clear:
        mode.degraded, mode.changed_at, mode.reason = False, now, ""
        logger.info("leaving degrade mode: lag is back under half the thresholds")
    mode.outbox_oldest_pending_age_s = lag["outbox_oldest_pending_age_s"]
    mode.consumer_lag_messages = int(lag["consumer_lag_messages"])
    mode.evaluated_at = now
    mode.save()
    _cache.pop("mode", None)
    return mode


def pipeline_mode_current() -> PipelineMode:
    """Return the recorded mode (cached for a second per process)."""
    cached = _cache.get("mode")
    if cached and time.monotonic() - cached[0] < _CACHE_S:
        return cached[1]
    mode = PipelineMode.objects.filter(key="pipeline").first() or PipelineMode()
    _cache["mode"] = (time.monotonic(), mode)
    return mode


def pipeline_degraded() -> bool:
    return pipeline_mode_current().degraded


def non_critical(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Refuse a view with 503 and ``Retry-After`` while the pipeline is degraded."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        mode = pipeline_mode_current()
        if mode.degraded:
            response = JsonResponse(
                {"error": "the pipeline is catching up on a backlog; try again later", "reason": mode.reason},
                status=503,
            )
            response["Retry-After"] = str(settings.RELIABILITY_DEGRADE_RETRY_AFTER_S)
            return response
        return view(request, *args, **kwargs)

    return wrapper
