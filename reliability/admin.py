"""Audit console of the reliability app: outbox, stream counters, message log, dead letters.

Every model here is written only by the pipeline, so the admin can look but not
touch. The one write, "Publish now", goes through the relay service: it marks a
row sent only after the broker confirmed it, exactly as the sweep would.

The lists stay as fast with months of history as with a day's (``bench/legs/history.py`` times them
at 10k and 10M rows): no full count (``BoundedCountPaginator``), no filter that reads a whole
table for its choices (``RecentValuesFieldListFilter``), and no date hierarchy on the tables
that grow with every message (its year and month links are a ``SELECT DISTINCT`` over every
row; the date filter in the sidebar narrows by date without one).
"""

from functools import cached_property
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ActionForm
from django.contrib.auth import get_permission_codename
from django.core.paginator import Paginator
from django.db import connections
from django.db.models import Field, Model, QuerySet
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


class BoundedCountPaginator(Paginator):
    """A paginator that never counts more than ``count_cap`` rows.

    A change list counts its rows on every view; on a table of millions that is a scan of all of
    them. This one counts at most ``count_cap + 1``: below that, the exact figure; past it, for
    the whole table, the planner's estimate (``pg_class.reltuples``, its partitions' summed if it
    is partitioned), and for a filtered list ``count_cap + 1`` (pages past it: narrow the filter).
    """

    count_cap = 10_000

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        if not isinstance(queryset, QuerySet):
            return super().count
        counted = queryset.order_by()[: self.count_cap + 1].count()
        if counted <= self.count_cap or queryset.query.where:
            return counted
        return max(counted, table_rows_estimate(queryset.model, using=queryset.db))


def table_rows_estimate(model: type[Model], *, using: str) -> int:
    """The planner's row count of ``model``'s table (of its partitions, summed, if partitioned)."""
    with connections[using].cursor() as cursor:
        cursor.execute(
            # A partitioned parent (relkind 'p') holds no rows; since PostgreSQL 14 its ANALYZE
            # gives it the sum of its partitions' reltuples, which must not be counted twice.
            "SELECT coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint FROM pg_class c "
            "WHERE (c.oid = to_regclass(%s) AND c.relkind <> 'p') "
            "OR c.oid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = to_regclass(%s))",
            [model._meta.db_table] * 2,
        )
        row = cursor.fetchone()
    return int(row[0]) if row else 0


class RecentValuesFieldListFilter(admin.AllValuesFieldListFilter):
    """Filter by the values of a field found among the newest ``recent`` rows.

    Django's ``AllValuesFieldListFilter`` lists every distinct value, a ``SELECT DISTINCT`` over
    the whole table on every view; handlers, task names and outcomes seen lately are what an
    operator filters by, at a cost that does not grow with history.
    """

    recent = 5_000

    def __init__(
        self,
        field: "Field[Any, Any]",
        request: HttpRequest,
        params: dict[str, Any],
        model: type[Model],
        model_admin: "admin.ModelAdmin[Any]",
        field_path: str,
    ) -> None:
        super().__init__(field, request, params, model, model_admin, field_path)
        queryset = model_admin.get_queryset(request)
        # The id of the ``recent``-th newest row, read first, then a range scan of the primary key
        # from it. As a literal the planner sees how few rows that is; "id IN (newest ids)" or
        # "id >= (subquery)" tempt it into hashing, or scanning in parallel, the whole table.
        oldest = queryset.order_by("-pk").values_list("pk", flat=True)[self.recent - 1 : self.recent].first()
        recent = queryset if oldest is None else queryset.filter(pk__gte=oldest)
        self.lookup_choices = recent.distinct().order_by(field_path).values_list(field_path, flat=True)


class ReadOnlyModelAdmin(admin.ModelAdmin):
    """Browse and search, never add, edit or delete: the rows are a record of what happened.

    The record grows with every message: lists count at most ``BoundedCountPaginator.count_cap``
    rows, and never the whole table twice (``show_full_result_count``).
    """

    paginator = BoundedCountPaginator
    show_full_result_count = False

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
    list_filter = (
        "status",
        ("task_name", RecentValuesFieldListFilter),
        ("queue", RecentValuesFieldListFilter),
        "created_at",
    )
    search_fields = ("=message_id", "stream", "task_name", "last_error")
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
    list_filter = (
        ("handler", RecentValuesFieldListFilter),
        ("outcome", RecentValuesFieldListFilter),
        "applied_at",
    )
    search_fields = ("=message_id", "handler", "stream")
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
    list_filter = ("reason", "status", ("handler", RecentValuesFieldListFilter), "created_at")
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
