"""Audit console of the reliability app: outbox, stream counters, message log, dead letters.

Every model here is written only by the pipeline, so the admin can look but not
touch. The one write, "Publish now", goes through the relay service: it marks a
row sent only after the broker confirmed it, exactly as the sweep would.
"""

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ActionForm
from django.contrib.auth import get_permission_codename
from django.db.models import QuerySet
from django.http import HttpRequest

from reliability.exceptions import ReliabilityError
from reliability.models import (
    DeadLetter,
    MessageLog,
    OutboxMessage,
    ReconcileRun,
    StreamCounter,
    StreamGap,
    StreamWatermark,
)
from reliability.ops import dead_letters
from reliability.produce import relay


class DiscardActionForm(ActionForm):
    reason = forms.CharField(required=False, label="Discard reason", max_length=2000)


class ReadOnlyModelAdmin(admin.ModelAdmin):
    """Browse and search, never add, edit or delete: the rows are a record of what happened."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(OutboxMessage)
class OutboxMessageAdmin(ReadOnlyModelAdmin):
    list_display = (
        "id",
        "message_id",
        "task_name",
        "stream",
        "seq",
        "status",
        "attempts",
        "next_attempt_at",
        "claimed_by",
        "claim_expires_at",
        "created_at",
        "sent_at",
    )
    list_filter = ("status", "task_name", "queue", "created_at")
    search_fields = ("=message_id", "stream", "task_name", "last_error")
    date_hierarchy = "created_at"
    ordering = ("-id",)
    actions = ("publish_now",)

    @admin.action(description="Publish now (selected pending messages)", permissions=["publish"])
    def publish_now(self, request: HttpRequest, queryset: QuerySet[OutboxMessage]) -> None:
        ids = list(queryset.filter(status=OutboxMessage.Status.PENDING).values_list("pk", flat=True))
        if not ids:
            self.message_user(request, "None of the selected messages is pending.", messages.WARNING)
            return
        sent = relay.outbox_relay_messages(ids=ids, due_only=False)
        level = messages.SUCCESS if sent == len(ids) else messages.WARNING
        self.message_user(
            request, f"{sent} of {len(ids)} pending messages published and confirmed by the broker.", level
        )

    def has_publish_permission(self, request: HttpRequest) -> bool:
        # Editing is refused to everyone; publishing is for holders of the model's change permission.
        return request.user.has_perm(f"{self.opts.app_label}.{get_permission_codename('change', self.opts)}")


@admin.register(StreamCounter)
class StreamCounterAdmin(ReadOnlyModelAdmin):
    list_display = ("stream", "last_seq")
    search_fields = ("stream",)
    ordering = ("stream",)


@admin.register(MessageLog)
class MessageLogAdmin(ReadOnlyModelAdmin):
    list_display = ("id", "handler", "message_id", "stream", "seq", "outcome", "redeliveries", "applied_at")
    list_filter = ("handler", "outcome", "applied_at")
    search_fields = ("=message_id", "handler", "stream")
    date_hierarchy = "applied_at"
    ordering = ("-id",)


@admin.register(DeadLetter)
class DeadLetterAdmin(ReadOnlyModelAdmin):
    """Dead letters with their reason; replay (original message_id) or discard with a reason."""

    list_display = (
        "id",
        "message_id",
        "handler",
        "reason",
        "status",
        "occurrences",
        "replays",
        "created_at",
        "last_replayed_at",
    )
    list_filter = ("reason", "status", "handler", "created_at")
    search_fields = ("=message_id", "handler", "detail", "discard_reason")
    date_hierarchy = "created_at"
    ordering = ("-id",)
    action_form = DiscardActionForm
    actions = ("replay", "discard")

    @admin.action(description="Replay (publish again with the original message_id)", permissions=["publish"])
    def replay(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> None:
        replayed, refused = 0, []
        for letter in queryset:
            try:
                dead_letters.dead_letter_replay(letter_id=letter.pk, using=queryset.db)
                replayed += 1
            except ReliabilityError as exc:
                refused.append(str(exc))
        self.message_user(request, f"{replayed} dead letters replayed.", messages.SUCCESS)
        for problem in refused:
            self.message_user(request, problem, messages.WARNING)

    @admin.action(description="Discard (give the reason in the box)", permissions=["publish"])
    def discard(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> None:
        reason = request.POST.get("reason", "").strip()
        if not reason:
            self.message_user(request, "Nothing discarded: a discard needs a reason.", messages.ERROR)
            return
        for letter in queryset:
            dead_letters.dead_letter_discard(letter_id=letter.pk, reason=reason, using=queryset.db)
        self.message_user(request, f"{queryset.count()} dead letters discarded.", messages.SUCCESS)

    def has_publish_permission(self, request: HttpRequest) -> bool:
        opts = self.opts
        return request.user.has_perm(f"{opts.app_label}.{get_permission_codename('change', opts)}")


@admin.register(StreamWatermark)
class StreamWatermarkAdmin(ReadOnlyModelAdmin):
    """Per stream and handler: how far the consumer got, and the gaps found, open and healed."""

    list_display = (
        "stream",
        "handler",
        "watermark",
        "max_seen",
        "producer_high",
        "gaps_found",
        "gaps_open",
        "gaps_healed",
        "last_applied_at",
    )
    list_filter = ("handler",)
    search_fields = ("stream", "handler")
    date_hierarchy = "updated_at"
    ordering = ("stream", "handler")


@admin.register(StreamGap)
class StreamGapAdmin(ReadOnlyModelAdmin):
    """Missing seqs; an escalated one has outlived the reconciler's attempts and needs a human."""

    list_display = (
        "stream",
        "seq",
        "handler",
        "status",
        "republish_attempts",
        "detected_at",
        "last_republished_at",
        "healed_at",
    )
    list_filter = ("status", "handler")
    search_fields = ("stream", "=seq", "last_error")
    date_hierarchy = "detected_at"
    ordering = ("-id",)


@admin.register(ReconcileRun)
class ReconcileRunAdmin(ReadOnlyModelAdmin):
    list_display = (
        "started_at",
        "database",
        "outbox_relayed",
        "tail_gaps_found",
        "republished",
        "not_in_outbox",
        "escalated",
        "gaps_open",
        "finished_at",
    )
    list_filter = ("database",)
    date_hierarchy = "started_at"
    ordering = ("-id",)
