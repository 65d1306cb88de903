"""Outbox, message log (inbox) and dead letters: the domain-free machinery.

Design overview
---------------
* **Outbox.** A producer writes its business rows and an ``OutboxMessage`` in one
  database transaction (``reliability.outbox_enqueue``). A message exists
  iff the write that caused it committed. Publishing happens only after commit:
  an after-commit fast path, and the relay sweep as the safety net. A row becomes
  ``sent`` only after the broker confirmed the publish (publisher confirms,
  ``mandatory``); a failed publish leaves it ``pending`` with ``attempts``,
  ``last_error`` and a backoff in ``next_attempt_at``.
* **Identity and position.** Every message has a globally unique ``message_id``
  (assigned at produce time, kept on every re-publish) and a ``(stream, seq)``
  position. ``seq`` comes from ``StreamCounter`` in the producing transaction, so a
  rolled-back write leaves no hole: the numbers of a stream are gap-free.
* **Message log.** A consumer inserts its ``MessageLog`` row *first*, in the same
  transaction as the handler's effect. The unique ``(handler, message_id)``
  constraint makes a redelivery recognisable: the insert does nothing, the effect
  is skipped and ``redeliveries`` counts it. An inbox row exists iff its effect
  committed.
* **Dead letters.** A message that can never succeed is recorded here with the
  reason, and acknowledged, so the queue behind it keeps moving.
* **Figures.** What ``/metrics`` and the health page show costs the same however long
  the history: the message log is counted by ``PipelineCounter`` rows added to in the
  statement that inserts, counts a redelivery of, or purges its rows (never by counting
  the table), and queue depths are read from the broker by beat into ``QueueDepth``.

* **Partitions.** The outbox and the message log grow with every message: both are
  range-partitioned on ``message_id``, whose UUIDv7 form begins with the millisecond it was
  made, and retention drops whole partitions (``reliability.ops.partitions``). So every unique
  key of theirs contains ``message_id`` (the primary key is ``(id, message_id)`` in the
  database), and ``(stream, seq)`` is unique because ``StreamCounter`` hands each seq out once,
  in the producing transaction, not by an index.

Invariants enforced by the database (named constraints): unique message_id in the
outbox, one locked counter row per stream, seq >= 1, a sent row has sent_at, unique
(handler, message_id) in the message log, one row per (counter, shard), counters and
depths never negative.
"""

from django.db import models
from django.db.models import Q
from django.utils import timezone


class OutboxMessage(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SENT = "sent", "Sent"

    message_id = models.UUIDField(editable=False)
    task_name = models.CharField(max_length=200, help_text="Celery task that consumes it.")
    queue = models.CharField(max_length=100)
    stream = models.CharField(max_length=100)
    seq = models.BigIntegerField()
    payload = models.JSONField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    next_attempt_at = models.DateTimeField(default=timezone.now)
    created_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True)
    # A relay claims rows (committed) before it publishes them and releases them when it
    # marks them: no row lock is held across a network wait. A claim that expires (its relay
    # died or is cut off) is taken over by any relay or the sweep.
    claimed_by = models.CharField(max_length=200, blank=True, default="")
    claim_expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "outbox message"
        constraints = [
            models.UniqueConstraint(fields=["message_id"], name="outbox_message_id_unique"),
            models.CheckConstraint(condition=Q(seq__gte=1), name="outbox_seq_positive"),
            models.CheckConstraint(
                condition=Q(status="pending", sent_at__isnull=True) | Q(status="sent", sent_at__isnull=False),
                name="outbox_sent_iff_sent_at",
            ),
        ]
        indexes = [
            models.Index(
                fields=["next_attempt_at", "id"],
                condition=Q(status="pending"),
                name="outbox_pending_due_idx",
            ),
            # The reconciler finds a message by its position. Not a unique key: a partitioned
            # table's unique keys must contain message_id; StreamCounter hands out each seq once.
            models.Index(fields=["stream", "seq"], name="outbox_stream_seq_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.task_name} {self.message_id} ({self.stream}#{self.seq}, {self.status})"


class PipelineCounter(models.Model):
    """A named count kept in the database, in shards: one row per (name, shard), summed when read.

    A writer adds to its own shard (its database session's, ``reliability.counters``) in
    the statement that does what is counted, so the count commits or rolls back with it
    and concurrent writers rarely wait on one row's lock. Each shard only grows. Counted:
    events not worth a row each (``housekeeping_expired_dropped``: a periodic task that
    expired in its queue and was dropped), and the message log's rows and redeliveries,
    ever inserted and ever purged (its rows now are the difference).
    """

    name = models.CharField(max_length=100)
    shard = models.PositiveSmallIntegerField(default=0)
    value = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["name", "shard"], name="pipeline_counter_name_shard_unique"),
            models.CheckConstraint(condition=Q(value__gte=0), name="pipeline_counter_nonnegative"),
        ]

    def __str__(self) -> str:
        return f"{self.name}[{self.shard}]={self.value}"


class QueueDepth(models.Model):
    """A broker queue's ready messages, as last read by beat (``queue_depths_record``).

    So that ``/metrics`` and the health page never open a broker connection. ``messages``
    is None when the broker did not say (no such queue, or unreachable).
    """

    queue = models.CharField(max_length=200, primary_key=True)
    messages = models.BigIntegerField(null=True, blank=True)
    observed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(messages__isnull=True) | Q(messages__gte=0),
                name="queue_depth_messages_nonnegative",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.queue}: {self.messages}"


class StreamCounter(models.Model):
    """The last sequence number handed out on a stream (one locked row per stream).

    A stream has one consumer: the task (and queue) its first message named. The
    heartbeat tells that consumer the stream's high-water mark.
    """

    stream = models.CharField(max_length=100, primary_key=True)
    last_seq = models.BigIntegerField(default=0)
    task_name = models.CharField(max_length=200, blank=True, default="")
    queue = models.CharField(max_length=100, blank=True, default="")

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(last_seq__gte=0), name="stream_counter_seq_nonnegative"),
        ]

    def __str__(self) -> str:
        return f"{self.stream}#{self.last_seq}"


class Outcome(models.TextChoices):
    """What the consumer did with a delivery, beside the handlers' own outcomes ("deducted")."""

    APPLIED = "applied", "Applied (the handler named no outcome of its own)"
    DUPLICATE = "duplicate", "A redelivery of a message already applied: skipped"
    DEAD_LETTERED = "dead-lettered", "Recorded as a dead letter and acknowledged"
    PARKED = "parked", "Ahead of its stream's next seq: parked until its predecessor is applied"
    HEARTBEAT = "heartbeat", "A stream heartbeat: the producer's high-water mark recorded"


class MessageLog(models.Model):
    """One row per message a handler applied (the inbox)."""

    handler = models.CharField(max_length=200)
    message_id = models.UUIDField()
    stream = models.CharField(max_length=100)
    seq = models.BigIntegerField()
    outcome = models.CharField(max_length=200, blank=True, default="")
    redeliveries = models.PositiveIntegerField(
        default=0, help_text="Deliveries recognised as duplicates and skipped."
    )
    applied_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name = "message log entry"
        verbose_name_plural = "message log"
        constraints = [
            models.UniqueConstraint(
                fields=["handler", "message_id"], name="message_log_handler_message_unique"
            ),
        ]
        indexes = [
            models.Index(fields=["stream", "seq"], name="message_log_stream_seq_idx"),
            models.Index(fields=["applied_at"], name="message_log_applied_at_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.handler} {self.message_id} ({self.outcome})"


class StreamWatermark(models.Model):
    """What one handler has applied of one stream: the consumer's own view, no join needed.

    ``watermark``: every seq <= watermark was applied (or dead-lettered). ``max_seen``:
    the highest seq applied. ``producer_high``: the highest seq the producer said
    exists (from envelopes and heartbeats). Seqs in (watermark, max_seen] that are
    missing have a ``StreamGap`` row; (max_seen, producer_high] is the possibly lost
    tail, materialised as gaps by the reconciler once it is older than the grace.
    """

    handler = models.CharField(max_length=200)
    stream = models.CharField(max_length=100)
    watermark = models.BigIntegerField(default=0)
    max_seen = models.BigIntegerField(default=0)
    producer_high = models.BigIntegerField(default=0)
    producer_high_at = models.DateTimeField(null=True, blank=True)
    gaps_found = models.BigIntegerField(default=0)
    gaps_healed = models.BigIntegerField(default=0)
    gaps_open = models.BigIntegerField(default=0, help_text="Gap rows not healed (open or escalated).")
    last_applied_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["handler", "stream"], name="stream_watermark_handler_stream_unique"
            ),
            models.CheckConstraint(
                condition=Q(watermark__gte=0) & Q(watermark__lte=models.F("max_seen")),
                name="stream_watermark_below_max_seen",
            ),
            models.CheckConstraint(
                condition=Q(gaps_open__gte=0), name="stream_watermark_gaps_open_nonnegative"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.handler} {self.stream}: watermark {self.watermark}, seen {self.max_seen}"


class StreamGap(models.Model):
    """A seq of a stream that a handler has not seen although a later one arrived."""

    class Status(models.TextChoices):
        OPEN = "open", "Open"
        HEALED = "healed", "Healed"
        ESCALATED = "escalated", "Escalated"

    handler = models.CharField(max_length=200)
    stream = models.CharField(max_length=100)
    seq = models.BigIntegerField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    detected_at = models.DateTimeField(default=timezone.now)
    healed_at = models.DateTimeField(null=True, blank=True)
    republish_attempts = models.PositiveIntegerField(default=0)
    last_republished_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["handler", "stream", "seq"], name="stream_gap_unique"),
            models.CheckConstraint(
                condition=~Q(status="healed") | Q(healed_at__isnull=False),
                name="stream_gap_healed_has_healed_at",
            ),
        ]
        indexes = [
            models.Index(
                fields=["handler", "stream", "seq"],
                condition=~Q(status="healed"),
                name="stream_gap_unhealed_idx",
            ),
            models.Index(fields=["status", "detected_at"], name="stream_gap_status_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.handler} {self.stream}#{self.seq} ({self.status})"


class ReconcileRun(models.Model):
    """What one reconciler pass found and did."""

    database = models.CharField(max_length=100)
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    tail_gaps_found = models.PositiveIntegerField(default=0)
    gaps_open = models.PositiveIntegerField(default=0)
    republished = models.PositiveIntegerField(default=0)
    not_in_outbox = models.PositiveIntegerField(default=0)
    escalated = models.PositiveIntegerField(default=0)
    outbox_relayed = models.PositiveIntegerField(default=0)

    class Meta:
        indexes = [models.Index(fields=["started_at"], name="reconcile_run_started_idx")]

    def __str__(self) -> str:
        return f"reconcile {self.database} at {self.started_at:%Y-%m-%d %H:%M:%S}"


class DeadLetter(models.Model):
    """A message that cannot succeed as it is: kept with the reason, never dropped.

    Recorded by the consumer middleware (a message that can never succeed) or by
    the dead-letter drain (what the broker dead-lettered: a handler that kept
    failing past the delivery limit, a body Celery could not decode). A replay
    re-publishes it with its original message_id, so the message log makes a
    replay of something already applied harmless. One row per (handler,
    message_id): failing again reopens it.
    """

    class Reason(models.TextChoices):
        INVALID_ENVELOPE = "invalid_envelope", "Invalid envelope"
        UNAUTHENTIC = "unauthentic", "Unsigned, forged or tampered (signature check failed)"
        HANDLER_FAILED = "handler_failed", "Handler refused it for good"
        EXPIRED = "expired", "Older than the maximum message age"
        DELIVERY_LIMIT = "delivery_limit", "Kept failing past the delivery limit"
        REJECTED = "rejected", "Rejected by the worker (undecodable, unknown task)"
        BROKER_OTHER = "broker_other", "Dead-lettered by the broker for another reason"

    class Status(models.TextChoices):
        OPEN = "open", "Open"
        REPLAYED = "replayed", "Replayed"
        DISCARDED = "discarded", "Discarded"

    message_id = models.UUIDField(null=True, blank=True)
    handler = models.CharField(max_length=200)
    stream = models.CharField(max_length=100, blank=True, default="")
    seq = models.BigIntegerField(null=True, blank=True)
    reason = models.CharField(max_length=32, choices=Reason.choices)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    detail = models.TextField(blank=True, default="")
    envelope = models.JSONField(null=True, blank=True, help_text="What a replay publishes again.")
    queue = models.CharField(max_length=100, blank=True, default="")
    headers = models.JSONField(null=True, blank=True)
    body = models.TextField(blank=True, default="", help_text="The raw body, as the broker held it.")
    occurrences = models.PositiveIntegerField(default=1)
    replays = models.PositiveIntegerField(default=0)
    last_replayed_at = models.DateTimeField(null=True, blank=True)
    discard_reason = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["handler", "message_id"],
                condition=Q(message_id__isnull=False),
                name="dead_letter_handler_message_unique",
            ),
            models.CheckConstraint(
                condition=~Q(status="discarded") | ~Q(discard_reason=""),
                name="dead_letter_discard_has_reason",
            ),
        ]
        indexes = [models.Index(fields=["status", "created_at"], name="dead_letter_status_idx")]

    def __str__(self) -> str:
        return f"{self.handler} {self.message_id} ({self.reason})"


class PipelineMode(models.Model):
    """Whether the pipeline is degraded (lagging): one row, written by ``pipeline_mode_evaluate``.

    Degraded means a backlog: trades are still accepted (they are safe in the
    outbox) but non-critical work is refused or deferred until the lag is gone.
    """

    key = models.CharField(max_length=32, primary_key=True, default="pipeline")
    degraded = models.BooleanField(default=False)
    reason = models.CharField(max_length=500, blank=True, default="")
    outbox_oldest_pending_age_s = models.FloatField(default=0.0)
    consumer_lag_messages = models.BigIntegerField(default=0)
    changed_at = models.DateTimeField(default=timezone.now)
    evaluated_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return "degraded" if self.degraded else "normal"


class ParkedMessage(models.Model):
    """A message of an ordered stream that arrived before its predecessor.

    It is already in the message log (so a redelivery is a duplicate) and waits
    here, durably, until the predecessor is applied; then it is applied in the
    same transaction, in sequence order.
    """

    handler = models.CharField(max_length=200)
    stream = models.CharField(max_length=100)
    seq = models.BigIntegerField()
    message_id = models.UUIDField()
    envelope = models.JSONField()
    parked_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["handler", "stream", "seq"], name="parked_message_position_unique"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.handler} {self.stream}#{self.seq} (parked)"
