"""Trades and deductions of the alternatives, as a user of plain Celery would model them.

Design overview
---------------
* A ``Trade`` is committed by the view, ``pending`` until its deduction task ran.
* The task takes the beans from the shared ``beans.Account`` with a conditional
  ``UPDATE`` (the balance check constraint stays the last word), writes a ``Deduction``
  and settles the trade, in one transaction.
* Nothing makes a deduction unique per trade: these pipelines are at-least-once, and a
  redelivered message deducts again. The bench counts such doubles (deductions beyond one
  per trade) instead of preventing them.
"""

from typing import ClassVar

from django.db import models
from django.db.models import Q
from django.utils import timezone

from beans.models import Account


class Trade(models.Model):
    class Via(models.TextChoices):
        BEST_PRACTICE_CELERY = "best_practice_celery", "on_commit + delay (best-practice Celery)"
        DJANGO_CELERY_OUTBOX = "django_celery_outbox", "django-celery-outbox"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        DEDUCTED = "deducted", "Deducted"
        REJECTED = "rejected", "Rejected"

    via = models.CharField(max_length=32, choices=Via.choices)
    # A foreign key, as a one-database user would write it: Django makes it DEFERRABLE
    # INITIALLY DEFERRED, so an unknown account fails the commit, no extra round trip.
    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="+")
    beans = models.BigIntegerField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    client_id = models.BigIntegerField(default=0)  # the API key that placed it, as trades.Trade keeps it
    created_at = models.DateTimeField(default=timezone.now)
    settled_at = models.DateTimeField(null=True, blank=True)

    # Spelled out for mypy: its Django plugin runs with project.settings (pyproject.toml),
    # where this app is not installed, so it adds neither the manager nor the ``_id`` attributes.
    objects: ClassVar[models.Manager["Trade"]] = models.Manager()
    account_id: int

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(beans__gt=0), name="bench_trade_beans_positive"),
        ]

    def __str__(self) -> str:
        return f"trade #{self.pk} via {self.via}: {self.beans} beans from {self.account_id} ({self.status})"


class Deduction(models.Model):
    """Beans taken from an account for a trade; more than one per trade is a duplicate delivery."""

    trade = models.ForeignKey(Trade, on_delete=models.PROTECT, related_name="deductions")
    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="+")
    beans = models.BigIntegerField()
    created_at = models.DateTimeField(default=timezone.now)

    objects: ClassVar[models.Manager["Deduction"]] = models.Manager()  # for mypy, as above
    account_id: int
    trade_id: int

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(beans__gt=0), name="bench_deduction_beans_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.beans} beans from {self.account_id} for trade #{self.trade_id}"
