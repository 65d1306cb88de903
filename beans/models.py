"""Bean accounts and their ledger: the consumer side of the pipeline.

Design overview
---------------
* An ``Account`` holds a balance of beans that never goes negative (a database
  check constraint, not just code).
* A balance changes only through a ``LedgerEntry``: an opening balance, a credit,
  or a deduction. Each entry records the balance after it, so for every account
  ``balance == sum(credits) - sum(deductions)`` and the last entry's
  ``balance_after == balance`` (``manage.py verify`` checks both).
* A deduction entry carries the ``message_id`` of the message that caused it,
  unique in the database: one message can never deduct twice.
"""

from django.db import models
from django.db.models import Q
from django.utils import timezone


class Account(models.Model):
    owner = models.CharField(max_length=200, db_index=True)
    balance = models.BigIntegerField(editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(balance__gte=0), name="account_balance_nonnegative"),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.owner}"


class LedgerEntry(models.Model):
    class Kind(models.TextChoices):
        OPENING = "opening", "Opening balance"
        CREDIT = "credit", "Credit"
        DEDUCTION = "deduction", "Deduction"

    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="entries")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    beans = models.BigIntegerField(help_text="Always positive; the kind says which way it moved.")
    balance_after = models.BigIntegerField()
    message_id = models.UUIDField(null=True, blank=True, help_text="The message that caused a deduction.")
    trade_id = models.BigIntegerField(null=True, blank=True)
    note = models.CharField(max_length=200, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = "ledger entries"
        constraints = [
            models.CheckConstraint(condition=Q(beans__gt=0), name="ledger_beans_positive"),
            models.CheckConstraint(
                condition=Q(balance_after__gte=0), name="ledger_balance_after_nonnegative"
            ),
            models.CheckConstraint(
                condition=~Q(kind="deduction") | Q(message_id__isnull=False),
                name="ledger_deduction_has_message_id",
            ),
            models.UniqueConstraint(fields=["message_id"], name="ledger_message_id_unique"),
        ]
        indexes = [
            models.Index(fields=["account", "id"], name="ledger_account_idx"),
            models.Index(fields=["trade_id"], name="ledger_trade_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.beans} on {self.account_id}"
