"""Audit console of the trade service: trades are settled by messages, never by hand."""

from django.contrib import admin

from reliability import ReadOnlyModelAdmin

from .models import Trade


@admin.register(Trade)
class TradeAdmin(ReadOnlyModelAdmin):
    list_display = (
        "id",
        "account_id",
        "beans",
        "status",
        "rejection_reason",
        "balance_after",
        "deduction_message_id",
        "idempotency_key",
        "created_at",
        "settled_at",
    )
    list_filter = ("status", "created_at")
    # deduction_message_id is the message_id the outbox, message log and ledger carry.
    search_fields = ("=deduction_message_id", "=id", "=account_id", "idempotency_key")
    ordering = ("-id",)
