"""Read the database Django's default connection points at: one value, or every row.

The probes the bench, the soak and the chaos run take of the pipeline's tables between
measurements. Django is set up by the caller; importing this module does not need it.
"""

from collections.abc import Sequence
from typing import Any


def rows(sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Every row ``sql`` returns."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(sql, list(params))
        return list(cursor.fetchall())


def scalar(sql: str, params: Sequence[Any] = ()) -> Any:
    """The first column of the first row ``sql`` returns."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(sql, list(params))
        return cursor.fetchone()[0]


def database_migrated(url: str, env: dict[str, str], *, timeout: float = 600) -> None:
    """Create the database of ``url`` afresh and run ``manage.py migrate`` on it with ``env``."""
    import sys

    from harness.processes import run_cmd
    from project.environment import database_recreate

    database_recreate(url)
    run_cmd([sys.executable, "manage.py", "migrate", "--noinput"], env=env, timeout=timeout)
