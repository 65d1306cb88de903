"""Trades: the producer side of the pipeline.

Design overview
---------------
* Placing a trade writes the ``Trade`` and its deduction message (a row of the
  reliability outbox) in one transaction; ``deduction_message_id`` names that
  message, so a trade exists iff its message exists.
* A trade starts ``pending`` and is settled exactly once, by the outcome message
  the bean service sends back: ``deducted`` or ``rejected``.
* The account is the bean service's; the trade keeps only its id (the two
  services may live in different databases).
* ``idempotency_key`` is unique per API client (``client_id``, the API key that placed the
  trade; 0 for trades placed in-process): a repeated request returns the first trade, and two
  clients never see each other's.
* ``TradeStatusCount`` keeps how many trades are settled in each status, so ``/metrics`` reads a
  few rows however long the history: the statement that settles trades adds them to it, in the
  same transaction (``trades.services``). Trades are never deleted, so its sums only grow and
  equal the table's counts; pending trades, the backlog, are counted from the table itself.
"""

from django.db import models
from django.db.models import Q
from django.utils import timezone


class Trade(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        DEDUCTED = "deducted", "Deducted"
        REJECTED = "rejected", "Rejected"

    account_id = models.BigIntegerField(db_index=True)
    beans = models.BigIntegerField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    rejection_reason = models.CharField(max_length=200, blank=True, default="")
    balance_after = models.BigIntegerField(null=True, blank=True)
    # NULL, not "": many trades have no key, and NULLs never collide in the unique constraint.
    idempotency_key = models.CharField(max_length=200, null=True, blank=True)  # noqa: DJ001
    # The API key that placed it (edge.ApiKey's id, kept as a plain id like account_id); 0 for
    # trades placed in-process (a management command, the bench).
    client_id = models.BigIntegerField(default=0)
    deduction_message_id = models.UUIDField(editable=False)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    settled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(beans__gt=0), name="trade_beans_positive"),
            models.UniqueConstraint(
                fields=["client_id", "idempotency_key"], name="trade_client_idempotency_key_unique"
            ),
            models.UniqueConstraint(fields=["deduction_message_id"], name="trade_deduction_message_unique"),
            models.CheckConstraint(
                condition=Q(status="pending", settled_at__isnull=True)
                | (~Q(status="pending") & Q(settled_at__isnull=False)),
                name="trade_settled_iff_settled_at",
            ),
        ]
        indexes = [models.Index(fields=["status", "created_at"], name="trade_status_created_idx")]

    def __str__(self) -> str:
        return f"trade #{self.pk}: {self.beans} beans from account {self.account_id} ({self.status})"


# A settling transaction adds to the row of its database session (pg_backend_pid() % this), so
# concurrent consumers rarely wait on one row lock; a reader sums the shards.
TRADE_STATUS_COUNT_SHARDS = 16


class TradeStatusCount(models.Model):
    """How many trades were settled in ``status``, one shard of it: ``trade_counts_by_status`` sums them."""

    status = models.CharField(max_length=16, choices=Trade.Status.choices)
    shard = models.SmallIntegerField()
    count = models.BigIntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["status", "shard"], name="trade_status_count_status_shard_unique"
            ),
            models.CheckConstraint(
                condition=Q(status__in=[Trade.Status.DEDUCTED, Trade.Status.REJECTED]),
                name="trade_status_count_settled_status",
            ),
            models.CheckConstraint(
                condition=Q(shard__gte=0, shard__lt=TRADE_STATUS_COUNT_SHARDS),
                name="trade_status_count_shard_in_range",
            ),
            models.CheckConstraint(condition=Q(count__gte=0), name="trade_status_count_nonnegative"),
        ]

    def __str__(self) -> str:
        return f"{self.count} trades {self.status} (shard {self.shard})"
