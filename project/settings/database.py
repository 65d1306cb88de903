"""PostgreSQL: DATABASE_URL (and BEANS_DATABASE_URL) read by dj-database-url, with deadlines."""

from typing import Any

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from project.environment import DEFAULT_DATABASE_URL

from .env import env_float, env_int, env_str


def database_from_url(url: str, *, test_name: str = "") -> dict[str, Any]:
    """Turn a PostgreSQL URL into a DATABASES entry (dj-database-url), with the session deadlines.

    Query parameters reach the driver as they are (``?sslmode=require&connect_timeout=3``,
    ``?host=/var/run/postgresql`` for the socket); they override the deadlines' defaults,
    and ``-c name=value`` items of ``options`` are merged with ours.
    """
    try:
        config: dict[str, Any] = dict(
            dj_database_url.parse(
                url, conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60), conn_health_checks=True
            )
        )
    except ValueError as exc:
        raise ImproperlyConfigured(f"cannot read the database URL {url!r}: {exc}") from exc
    if config.get("ENGINE") != "django.db.backends.postgresql":
        raise ImproperlyConfigured(f"only PostgreSQL database URLs are supported, got {url!r}")
    # Persistent connections (CONN_MAX_AGE above): workers and the relay run many short transactions.
    config["OPTIONS"] = database_session_options(dict(config.get("OPTIONS") or {}))
    config["TEST"] = {"NAME": test_name or None}
    return config


def _server_options(text: str) -> dict[str, str]:
    """``"-c a=1 -c b=2"`` (libpq ``options``) as ``{"a": "1", "b": "2"}``."""
    parsed, tokens = {}, text.replace("-c ", "-c").split()
    for token in tokens:
        name, _, value = token.removeprefix("-c").partition("=")
        if name:
            parsed[name] = value
    return parsed


def database_session_options(given: dict[str, Any]) -> dict[str, Any]:
    """Deadlines on every database session, both ends of it (README, "Partitions and timeouts").

    The client (libpq) gives up on a server that went silent: connect timeout, TCP
    keepalives, and ``tcp_user_timeout`` for data the server never acknowledges. The
    server gives up on a client that went silent mid-transaction: after
    ``idle_in_transaction_session_timeout`` it ends the session and its row locks
    (accounts, stream watermarks) are released, so other workers carry on; its own
    keepalives find a vanished client that is not in a transaction. ``given`` (from the
    URL) wins over these defaults.
    """
    idle = env_int("DATABASE_KEEPALIVES_IDLE_S", 5)
    interval = env_int("DATABASE_KEEPALIVES_INTERVAL_S", 2)
    count = env_int("DATABASE_KEEPALIVES_COUNT", 3)
    user_timeout_ms = env_int("DATABASE_TCP_USER_TIMEOUT_MS", 15_000)
    in_transaction_s = env_float("DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_S", 30.0)
    server: dict[str, object] = {
        "idle_in_transaction_session_timeout": f"{int(in_transaction_s * 1000)}ms",
        "tcp_keepalives_idle": idle,
        "tcp_keepalives_interval": interval,
        "tcp_keepalives_count": count,
        "tcp_user_timeout": user_timeout_ms,
    }
    server.update(_server_options(str(given.pop("options", ""))))
    return {
        "connect_timeout": env_int("DATABASE_CONNECT_TIMEOUT_S", 5),
        "keepalives": 1,
        "keepalives_idle": idle,
        "keepalives_interval": interval,
        "keepalives_count": count,
        "tcp_user_timeout": user_timeout_ms,
        **given,
        "options": " ".join(f"-c {name}={value}" for name, value in server.items()),
    }


# No user or password by default: libpq connects as this OS user, with the password that
# scripts/ensure-services keeps in ~/.pgpass (project/environment.py says why).
DATABASE_URL = env_str("DATABASE_URL", DEFAULT_DATABASE_URL)
DATABASES = {
    "default": database_from_url(
        DATABASE_URL,
        test_name=env_str("DATABASE_TEST_NAME", ""),
    ),
}
# The bean service in a database of its own (optional): its accounts, ledger, outbox
# and message log live there, so "one transaction" still holds on each side.
BEANS_DATABASE_URL = env_str("BEANS_DATABASE_URL", "")
if BEANS_DATABASE_URL:
    DATABASES["beans"] = database_from_url(
        BEANS_DATABASE_URL, test_name=env_str("BEANS_DATABASE_TEST_NAME", "")
    )
BEANS_DATABASE = "beans" if BEANS_DATABASE_URL else "default"
DATABASE_ROUTERS = ["project.routers.ServiceDatabaseRouter"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
