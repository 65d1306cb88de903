"""Retention (``reliability.ops.retention``): unsafe windows refused, old rows deleted in bounded batches."""

import uuid
from datetime import timedelta

from django.test import TestCase, override_settings
from django.utils import timezone

from reliability.models import MessageLog
from reliability.ops.retention import retention_horizons_check, retention_purge

HANDLER = "tests.handler"


class RetentionTests(TestCase):
    def test_unsafe_retention_settings_are_refused_with_the_setting_to_change(self) -> None:
        problems = retention_horizons_check(
            dedupe_window_s=3600,
            outbox_retention_s=86400,
            max_message_age_s=7200,
            reconcile_grace_s=30,
            reconcile_max_attempts=5,
            dead_letter_replay_window_s=600,
        )
        self.assertEqual(len(problems), 1)
        self.assertIn("RELIABILITY_DEDUPE_WINDOW_S", problems[0])
        self.assertIn("RELIABILITY_MAX_MESSAGE_AGE_S", problems[0])

    def test_safe_defaults_pass(self) -> None:
        from reliability.conf import settings

        self.assertEqual(
            retention_horizons_check(
                dedupe_window_s=settings.RELIABILITY_DEDUPE_WINDOW_S,
                outbox_retention_s=settings.RELIABILITY_OUTBOX_RETENTION_S,
                max_message_age_s=settings.RELIABILITY_MAX_MESSAGE_AGE_S,
                reconcile_grace_s=settings.RELIABILITY_RECONCILE_GRACE_S,
                reconcile_max_attempts=settings.RELIABILITY_RECONCILE_MAX_ATTEMPTS,
                dead_letter_replay_window_s=settings.RELIABILITY_DEAD_LETTER_REPLAY_WINDOW_S,
            ),
            [],
        )

    @override_settings(RELIABILITY_DEDUPE_WINDOW_S=60, RELIABILITY_OUTBOX_RETENTION_S=60)
    def test_old_rows_are_deleted_in_bounded_batches_and_fresh_ones_kept(self) -> None:
        old = timezone.now() - timedelta(seconds=120)
        MessageLog.objects.bulk_create(
            [
                MessageLog(handler=HANDLER, message_id=uuid.uuid4(), stream="s", seq=n, applied_at=old)
                for n in range(25)
            ]
        )
        fresh = MessageLog.objects.create(handler=HANDLER, message_id=uuid.uuid4(), stream="s", seq=99)
        counts = retention_purge(batch_size=10, max_batches=2)
        self.assertEqual(counts["message_log"], 20, "two batches of ten, then it stops")
        counts = retention_purge(batch_size=10, max_batches=2)
        self.assertEqual(counts["message_log"], 5)
        self.assertEqual(list(MessageLog.objects.values_list("pk", flat=True)), [fresh.pk])
