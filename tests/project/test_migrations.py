"""The models and the migrations agree: a model change without its migration fails here."""

from io import StringIO

from django.core.management import call_command
from django.test import TestCase


class MigrationTests(TestCase):
    def test_no_migration_is_missing(self) -> None:
        out = StringIO()
        try:
            call_command("makemigrations", "--check", "--dry-run", stdout=out, stderr=out)
        except SystemExit:
            self.fail(f"a model change has no migration; run makemigrations:\n{out.getvalue()}")
