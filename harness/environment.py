"""The environment scrub: what a tool's subprocesses see of the developer's environment.

``isolated_env`` is a run of its own (the chaos run, the bench, the soak): the developer's
variables that could point it at their data or change its setup are dropped (``foreign``) and
the project runs at its defaults on the run's database, vhost and Redis database.
``subprocess_env`` is a subprocess of the test run: the developer's environment, on the test
databases and vhost. Neither sets Django up; ``subprocess_env`` reads the settings when called.
"""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def foreign(key: str) -> bool:
    """A developer's variable that could point a run at their data or change its setup."""
    return (
        key.startswith(
            ("RELIABILITY_", "DJANGO_", "CELERY_", "DATABASE_", "TRADES_", "BEANS_", "API_", "WEB_")
        )
        or "DATABASE_URL" in key
        or key == "PGAPPNAME"
    )


def scrubbed_env() -> dict[str, str]:
    """This process's environment without the variables ``foreign`` names."""
    return {key: value for key, value in os.environ.items() if not foreign(key)}


def isolated_env(*, database_url: str, broker_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    """The environment of a run of its own (the chaos soak, the bench) and of every process it
    starts: the developer's variables that could change the setup are dropped, the project runs
    at its defaults on the run's own database, vhost and Redis database, and ``extra`` on top."""
    env = scrubbed_env()
    env.update(
        DATABASE_URL=database_url,
        CELERY_BROKER_URL=broker_url,
        DJANGO_SETTINGS_MODULE="project.settings",
        DJANGO_ENV="development",
        DJANGO_DEBUG="false",
        RELIABILITY_REDIS_URL=redis_url,
        # The API's rate-limit counters too: a connection to another Redis database (the
        # default, 2) would also stop the chaos run's Redis fault from restarting redis-server.
        API_RATE_LIMIT_REDIS_URL=redis_url,
        LOG_LEVEL="WARNING",
        PYTHONPATH=str(REPO),
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


def test_database_url(alias: str = "default") -> str:
    """The URL the settings were read from (user, password, host or socket, options kept), naming the test database."""
    from django.conf import settings
    from django.db import connections

    from project.environment import url_with_path

    source = settings.DATABASE_URL if alias == "default" else settings.BEANS_DATABASE_URL
    return url_with_path(source, connections[alias].settings_dict["NAME"])


def subprocess_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a subprocess that works on the test databases and vhost."""
    from django.db import connections

    return {
        **os.environ,
        "DATABASE_URL": test_database_url(),
        **({"BEANS_DATABASE_URL": test_database_url("beans")} if "beans" in connections else {}),
        "DJANGO_ENV": "test",
        "PYTHONUNBUFFERED": "1",
        **(extra or {}),
    }
