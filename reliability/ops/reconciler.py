"""The reconciler: find what was produced but never consumed, and publish it again.

It works from the consumer's own records (``StreamWatermark`` and ``StreamGap``,
kept by the consumer middleware), never by joining producer and consumer tables,
so the two may live in different databases. For each open gap older than the
grace period it looks up the producer's outbox row by ``(stream, seq)`` (a point
lookup on a unique index) and publishes it again with its *original* message_id;
the consumer's message log makes that harmless if the first copy shows up after
all. A gap that stays open after ``RELIABILITY_RECONCILE_MAX_ATTEMPTS`` publishes is
escalated (status, ERROR log, admin, ``pipeline_status``) and not retried by
itself, so nothing loops forever. Its cost grows with the number of gaps and
streams, not with history.
"""

import logging
from collections import defaultdict
from datetime import timedelta

from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from reliability.conf import reliability_databases, settings
from reliability.consume.streams import stream_tail_materialize
from reliability.exceptions import PublishError
from reliability.models import OutboxMessage, ReconcileRun, StreamGap, StreamWatermark
from reliability.produce.relay import outbox_message_publish, outbox_relay_batch, stream_highs
from reliability.selectors import queue_depths

logger = logging.getLogger(__name__)


def _outbox_rows(stream: str, seqs: list[int]) -> dict[int, tuple[str, OutboxMessage]]:
    """Find the producer's outbox rows of ``stream`` at ``seqs``, in whichever database holds them."""
    found: dict[int, tuple[str, OutboxMessage]] = {}
    for alias in reliability_databases():
        for row in OutboxMessage.objects.using(alias).filter(stream=stream, seq__in=seqs):
            found[row.seq] = (alias, row)
    return found


def reconcile_tails(*, using: str, grace: timedelta) -> int:
    """Turn tails the producer reported but the consumer never saw into gaps."""
    cutoff = timezone.now() - grace
    stale = (
        StreamWatermark.objects.using(using)
        .filter(producer_high__gt=F("max_seen"), producer_high_at__lt=cutoff)
        .filter(Q(last_applied_at__isnull=True) | Q(last_applied_at__lt=cutoff))
    )
    found = 0
    for candidate_id in stale.values_list("id", flat=True):
        with transaction.atomic(using=using):
            watermark = StreamWatermark.objects.using(using).select_for_update().get(pk=candidate_id)
            found += stream_tail_materialize(watermark=watermark, using=using)
    return found


def reconcile_gaps(*, using: str, grace: timedelta, run: ReconcileRun) -> None:
    """Publish again every open gap past the grace period whose last attempt is also past it."""
    cutoff = timezone.now() - grace
    due = list(
        StreamGap.objects.using(using)
        .filter(status=StreamGap.Status.OPEN, detected_at__lt=cutoff)
        .filter(Q(last_republished_at__isnull=True) | Q(last_republished_at__lt=cutoff))
        .order_by("id")[: settings.RELIABILITY_RECONCILE_BATCH_SIZE]
    )
    by_stream: dict[str, list[StreamGap]] = defaultdict(list)
    for gap in due:
        by_stream[gap.stream].append(gap)
    depths = queue_depths() if due else {}
    for stream, gaps in by_stream.items():
        rows = _outbox_rows(stream, [gap.seq for gap in gaps])
        for gap in gaps:
            located = rows.get(gap.seq)
            if located and gap.republish_attempts and depths.get(located[1].queue):
                # The copy published last time may still be waiting behind a backlog: a
                # full queue is no evidence that it was lost, so neither publish again
                # nor count an attempt (no false escalation under back-pressure).
                continue
            if not _gap_republish(gap, located, using=using, run=run):
                return  # the broker refuses: stop, the next pass retries


def _gap_republish(
    gap: StreamGap, located: tuple[str, OutboxMessage] | None, *, using: str, run: ReconcileRun
) -> bool:
    now = timezone.now()
    error = ""
    if located is None:
        error = "no outbox row has this (stream, seq): deleted by retention, or the stream is unknown"
        run.not_in_outbox += 1
    else:
        alias, row = located
        if row.status == OutboxMessage.Status.PENDING:
            return True  # never published yet: the relay owns it
        highs = stream_highs(streams=[row.stream], using=alias)
        try:
            outbox_message_publish(row, producer_high=highs.get(row.stream))
        except PublishError as exc:
            logger.warning("reconciler could not republish message %s: %s", row.message_id, exc)
            return False
        run.republished += 1
        logger.info("reconciler republished message %s (%s#%d)", row.message_id, row.stream, row.seq)
    attempts = gap.republish_attempts + 1
    updated = (
        StreamGap.objects.using(using)
        .filter(pk=gap.pk, status=StreamGap.Status.OPEN)
        .update(republish_attempts=attempts, last_republished_at=now, last_error=error)
    )
    if updated and attempts >= settings.RELIABILITY_RECONCILE_MAX_ATTEMPTS:
        escalated = (
            StreamGap.objects.using(using)
            .filter(pk=gap.pk, status=StreamGap.Status.OPEN)
            .update(status=StreamGap.Status.ESCALATED)
        )
        if escalated:
            run.escalated += 1
            logger.error(
                "gap %s#%d of %s still open after %d republishes: escalated, needs a human (%s)",
                gap.stream,
                gap.seq,
                gap.handler,
                attempts,
                error or "message republished but never applied",
            )
    return True


def reconcile_pass(*, using: str) -> ReconcileRun:
    """Run one reconciler pass over the reliability tables in database ``using``."""
    grace = timedelta(seconds=settings.RELIABILITY_RECONCILE_GRACE_S)
    run = ReconcileRun.objects.using(using).create(database=using)
    run.outbox_relayed = outbox_relay_batch(using=using)
    run.tail_gaps_found = reconcile_tails(using=using, grace=grace)
    reconcile_gaps(using=using, grace=grace, run=run)
    run.gaps_open = StreamGap.objects.using(using).exclude(status=StreamGap.Status.HEALED).count()
    run.finished_at = timezone.now()
    run.save(using=using)
    if run.tail_gaps_found or run.republished or run.escalated or run.not_in_outbox:
        logger.info(
            "reconcile %s: %d tail gaps found, %d republished, %d not in outbox, %d escalated, %d open",
            using,
            run.tail_gaps_found,
            run.republished,
            run.not_in_outbox,
            run.escalated,
            run.gaps_open,
        )
    return run


def reconcile_all() -> list[ReconcileRun]:
    """Run one pass over every reliability database."""
    return [reconcile_pass(using=alias) for alias in reliability_databases()]
