"""ApiKey moved from the project app to edge in Django's state only: a database migrated before
the move keeps its keys, and the admin's permissions on them."""

from io import StringIO

from django.contrib.auth.models import Permission
from django.contrib.contenttypes.models import ContentType
from django.core.management import call_command
from django.core.management.sql import emit_post_migrate_signal
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.test import TransactionTestCase

from edge.models import ApiKey
from edge.selectors import api_key_authenticate, api_key_digest

BEFORE: list[tuple[str, str | None]] = [("project", "0001_api_key"), ("edge", None)]
AFTER: list[tuple[str, str | None]] = [("project", "0002_api_key_moved_to_edge"), ("edge", "0001_initial")]
KEY = "bk_0123456789ab_made-before-the-move"


class ApiKeyMoveTests(TransactionTestCase):
    def migrate(self, targets: list[tuple[str, str | None]]) -> MigrationExecutor:
        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        executor.migrate(targets)
        ContentType.objects.clear_cache()
        return executor

    def tearDown(self) -> None:
        self.migrate(AFTER)

    def test_a_key_made_before_the_move_still_authenticates_with_its_permissions(self) -> None:
        executor = self.migrate(BEFORE)
        old_apps = executor.loader.project_state(("project", "0001_api_key")).apps
        old_key = old_apps.get_model("project", "ApiKey").objects.create(
            name="partner", prefix="0123456789ab", digest=api_key_digest(KEY), scopes=["trades:read"]
        )
        content_type = ContentType.objects.get(app_label="project", model="apikey")
        permissions = set(content_type.permission_set.values_list("codename", flat=True))
        self.assertEqual(permissions, {"add_apikey", "change_apikey", "delete_apikey", "view_apikey"})

        self.migrate(AFTER)

        api_key = api_key_authenticate(KEY)
        assert api_key is not None, "the key no longer authenticates"
        self.assertEqual((api_key.pk, api_key.name, api_key.scopes), (old_key.pk, "partner", ["trades:read"]))
        self.assertEqual(ContentType.objects.get_for_model(ApiKey).pk, content_type.pk, "the same row, moved")
        self.assertFalse(ContentType.objects.filter(app_label="project", model="apikey").exists())
        self.assertEqual(
            set(Permission.objects.filter(content_type=content_type).values_list("codename", flat=True)),
            permissions,
        )

    def test_back_and_forth_the_row_with_the_history_is_kept(self) -> None:
        """Migrated back, ``post_migrate`` makes an edge.apikey row of its own: forward, the moved row wins."""
        self.migrate(BEFORE)
        content_type = ContentType.objects.get(app_label="project", model="apikey")
        emit_post_migrate_signal(verbosity=0, interactive=False, db=connection.alias)
        duplicate = ContentType.objects.get(app_label="edge", model="apikey")

        self.migrate(AFTER)

        self.assertEqual(ContentType.objects.get_for_model(ApiKey).pk, content_type.pk)
        self.assertFalse(ContentType.objects.filter(pk=duplicate.pk).exists())
        self.assertEqual(Permission.objects.filter(content_type=content_type).count(), 4)

    def test_the_move_touches_no_table(self) -> None:
        for app_label, name in AFTER:
            out = StringIO()
            call_command("sqlmigrate", app_label, name, stdout=out)
            lines = out.getvalue().splitlines()
            statements = [
                line for line in lines if line not in ("", "BEGIN;", "COMMIT;") and line[:2] != "--"
            ]
            self.assertEqual(statements, [], f"{app_label}.{name} changes the database")
