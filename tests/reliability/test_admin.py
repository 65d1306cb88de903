"""The library's admin: its lists cost the same however long the history (issue 23;
``bench/legs/history.py``), and the outbox's one write, publish now, goes through the relay.

``BoundedCountPaginator`` counts at most its cap, then shows the planner's estimate for a whole
table; ``RecentValuesFieldListFilter`` offers the values of the newest rows only, never a
``SELECT DISTINCT`` over every row; the lists that grow with every message have no date hierarchy.
"""

import uuid
from unittest import mock

from django.contrib import admin
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import TestCase
from django.urls import reverse

from beans.models import LedgerEntry
from reliability.admin import BoundedCountPaginator, RecentValuesFieldListFilter
from reliability.models import MessageLog, OutboxMessage
from tests.admin import AdminTestCase, admin_url
from trades.models import Trade


def log_rows(handler: str, count: int, first_seq: int = 1) -> None:
    MessageLog.objects.bulk_create(
        MessageLog(handler=handler, message_id=uuid.uuid4(), stream="s", seq=first_seq + n, outcome=handler)
        for n in range(count)
    )


class BoundedCountPaginatorTests(TestCase):
    def setUp(self) -> None:
        log_rows("a", 8)
        log_rows("b", 4, first_seq=100)

    def test_below_the_cap_the_count_is_exact(self) -> None:
        self.assertEqual(BoundedCountPaginator(MessageLog.objects.order_by("-id"), 100).count, 12)

    def test_past_the_cap_the_whole_table_shows_the_planners_estimate(self) -> None:
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE reliability_messagelog")
        with mock.patch.object(BoundedCountPaginator, "count_cap", 5):
            self.assertEqual(BoundedCountPaginator(MessageLog.objects.order_by("-id"), 100).count, 12)

    def test_past_the_cap_a_filtered_list_counts_one_past_the_cap(self) -> None:
        with mock.patch.object(BoundedCountPaginator, "count_cap", 5):
            paginator = BoundedCountPaginator(MessageLog.objects.filter(handler="a").order_by("-id"), 100)
            self.assertEqual(paginator.count, 6)


class HistoryListTests(TestCase):
    def setUp(self) -> None:
        self.client.force_login(User.objects.create_superuser("admin", "admin@example.com", None))

    def test_the_handler_filter_offers_the_values_of_the_newest_rows(self) -> None:
        log_rows("old.handler", 5)
        log_rows("new.handler", 3, first_seq=100)
        with mock.patch.object(RecentValuesFieldListFilter, "recent", 3):
            response = self.client.get(reverse("admin:reliability_messagelog_changelist"))
        self.assertEqual(response.status_code, 200)
        (spec,) = [
            spec
            for spec in response.context["cl"].filter_specs
            if getattr(spec, "field_path", "") == "handler"
        ]
        self.assertEqual(list(spec.lookup_choices), ["new.handler"])
        # A filter by it still works, and the list says how many.
        response = self.client.get(
            reverse("admin:reliability_messagelog_changelist"), {"handler": "old.handler"}
        )
        self.assertEqual(response.context["cl"].result_count, 5)

    def test_the_lists_that_grow_with_every_message_have_no_date_hierarchy(self) -> None:
        for model in (MessageLog, OutboxMessage, Trade, LedgerEntry):
            with self.subTest(model=model.__name__):
                model_admin = admin.site.get_model_admin(model)
                self.assertIsNone(model_admin.date_hierarchy)
                self.assertFalse(model_admin.show_full_result_count)
                self.assertIs(model_admin.paginator, BoundedCountPaginator)


class OutboxAdminTests(AdminTestCase):
    def _publish(self, ids: list[int]) -> list[str]:
        response = self.client.post(
            admin_url(OutboxMessage, "changelist"),
            {"action": "publish_now", "_selected_action": ids, "index": 0},
            follow=True,
        )
        return [str(message) for message in response.context["messages"]]

    def test_publish_now_marks_rows_sent_after_the_broker_confirmed(self) -> None:
        with mock.patch("reliability.produce.relay.publisher") as publisher:
            feedback = self._publish([self.outbox.pk])

        self.assertEqual(feedback, ["1 of 1 pending messages published and confirmed by the broker."])
        publisher.return_value.publish.assert_called_once()
        self.assertEqual(publisher.return_value.publish.call_args.kwargs["message_id"], str(self.message_id))
        self.outbox.refresh_from_db()
        self.assertEqual(self.outbox.status, OutboxMessage.Status.SENT)
        self.assertIsNotNone(self.outbox.sent_at)

    def test_publish_now_skips_rows_already_sent(self) -> None:
        with mock.patch("reliability.produce.relay.publisher") as publisher:
            self._publish([self.outbox.pk])
            feedback = self._publish([self.outbox.pk])
        self.assertEqual(feedback, ["None of the selected messages is pending."])
        publisher.return_value.publish.assert_called_once()

    def test_publish_now_needs_the_change_permission(self) -> None:
        viewer = User.objects.create_user("viewer", password=None, is_staff=True)
        viewer.user_permissions.add(Permission.objects.get(codename="view_outboxmessage"))
        self.client.force_login(viewer)

        with mock.patch("reliability.produce.relay.publisher") as publisher:
            self._publish([self.outbox.pk])

        publisher.return_value.publish.assert_not_called()
        self.outbox.refresh_from_db()
        self.assertEqual(self.outbox.status, OutboxMessage.Status.PENDING)
