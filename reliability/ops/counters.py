"""Event counters kept in the database (``PipelineCounter``), added to in one statement."""

from django.db import connections
from django.utils import timezone

from reliability.models import PipelineCounter


def pipeline_counter_add(*, name: str, by: int = 1, using: str = "default") -> None:
    """Add ``by`` to the event counter ``name`` (created at 0), in one statement.

    An upsert, so concurrent processes add to the same row without a lost update.
    """
    table = PipelineCounter._meta.db_table
    with connections[using].cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (name, value, updated_at) VALUES (%s, %s, %s) "  # noqa: S608
            f"ON CONFLICT (name) DO UPDATE SET value = {table}.value + EXCLUDED.value, "
            "updated_at = EXCLUDED.updated_at",
            [name, by, timezone.now()],
        )
