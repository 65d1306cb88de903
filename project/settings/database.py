"""PostgreSQL: DATABASE_URL (and BEANS_DATABASE_URL) read by dj-database-url, with deadlines;
and DATABASE_POOLER when those URLs lead to a transaction pooler (pgbouncer)."""

from typing import Any
from urllib.parse import urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from psycopg.conninfo import conninfo_to_dict

from project.environment import DEFAULT_DATABASE_URL, libpq_url

from .env import env_float, env_int, env_str

# DATABASE_POOLER's values: "" (the URLs lead to PostgreSQL itself) or the pooler they lead to.
POOLER_PGBOUNCER_TRANSACTION = "pgbouncer-transaction"
POOLERS = ("", POOLER_PGBOUNCER_TRANSACTION)


def database_from_url(url: str, *, test_name: str = "", pooler: str = "") -> dict[str, Any]:
    """Turn a PostgreSQL URL into a DATABASES entry (dj-database-url), with the session deadlines.

    Query parameters reach the driver as they are (``?sslmode=require&connect_timeout=3``,
    ``?host=/var/run/postgresql`` for the socket); they override the deadlines' defaults,
    and ``-c name=value`` items of ``options`` are merged with ours.

    ``pooler`` names what the URL leads to when it is not PostgreSQL itself
    (``database_pooled``); the URL may then carry no ``options``.
    """
    conn_max_age = env_int("DATABASE_CONN_MAX_AGE", 60)
    try:
        if "," in urlsplit(url).netloc:
            config = _multi_host_database(url, conn_max_age=conn_max_age)
        else:
            config = dict(dj_database_url.parse(url, conn_max_age=conn_max_age, conn_health_checks=True))
    except ValueError as exc:
        raise ImproperlyConfigured(f"cannot read the database URL {url!r}: {exc}") from exc
    if config.get("ENGINE") != "django.db.backends.postgresql":
        raise ImproperlyConfigured(f"only PostgreSQL database URLs are supported, got {url!r}")
    # Persistent connections (CONN_MAX_AGE above): workers and the relay run many short transactions.
    given = dict(config.get("OPTIONS") or {})
    if pooler:
        config = database_pooled(config, given, pooler=pooler, url=url)
    else:
        config["OPTIONS"] = database_session_options(given)
    config["TEST"] = {"NAME": test_name or None}
    return config


def database_pooled(
    config: dict[str, Any], given: dict[str, Any], *, pooler: str, url: str
) -> dict[str, Any]:
    """A DATABASES entry whose URL leads to a transaction pooler (``DATABASE_POOLER``).

    In transaction pooling each transaction (each statement, in autocommit) may run on another
    server session, shared with other clients, so nothing may outlive a transaction:

    * ``DISABLE_SERVER_SIDE_CURSORS``: ``QuerySet.iterator()`` would otherwise declare a cursor
      WITH HOLD in one session and fetch from it in another (Django's docs, "Transaction pooling
      and server-side cursors").
    * No libpq ``options`` (``-c name=value`` session settings): pgbouncer refuses the startup
      parameter, and a session setting would reach other clients of the same server connection.
      The server-side deadlines they carried (``database_session_options``) then come from the
      pooler: ``scripts/pgbouncer`` sets ``idle_transaction_timeout`` (the client idle in a
      transaction is disconnected, its server connection closed and its locks released),
      ``idle_in_transaction_session_timeout`` on each server connection (``connect_query``) and
      its own TCP keepalives towards the server, from the same DATABASE_* variables; with another
      pooler, set them there or on the role (``ALTER ROLE ... SET
      idle_in_transaction_session_timeout``). The client's own deadlines (connect timeout,
      keepalives, ``tcp_user_timeout``, towards the pooler) stay.
    * Prepared statements stay off: Django turns psycopg's off unless ``prepare_threshold`` is
      given, and pgbouncer 1.18 cannot carry them from one transaction to the next.

    A URL that asks for ``options`` or ``prepare_threshold`` is refused rather than quietly
    changed.
    """
    if pooler not in POOLERS:
        raise ImproperlyConfigured(
            f"DATABASE_POOLER must be one of {', '.join(repr(p) for p in POOLERS)}, got {pooler!r}"
        )
    refused = sorted({"options", "prepare_threshold"} & given.keys())
    if refused:
        raise ImproperlyConfigured(
            f"the database URL {url!r} leads to a transaction pooler (DATABASE_POOLER={pooler}), "
            f"which cannot keep what {' and '.join(refused)} set up for a session: leave them out"
        )
    options = database_session_options(given)
    options.pop("options")
    return {**config, "OPTIONS": options, "DISABLE_SERVER_SIDE_CURSORS": True}


def _multi_host_database(url: str, *, conn_max_age: int) -> dict[str, Any]:
    """A libpq multi-host URL (``postgresql://a:5441,b:5442/db?target_session_attrs=read-write``).

    dj-database-url reads one host only; libpq's own parser (through psycopg) reads the list,
    which Django hands to the driver as it is (``host=a,b port=5441,5442``). libpq then tries
    the hosts in turn and, with ``target_session_attrs=read-write``, keeps the one that takes
    writes: after a failover every new connection finds the new primary by itself
    (``python -m harness.postgres_cluster urls``; README, "A highly available database").
    """
    if urlsplit(url).scheme not in ("postgres", "postgresql"):
        raise ValueError("a multi-host URL must be postgres:// or postgresql://")
    params = conninfo_to_dict(libpq_url(url))
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": params.pop("dbname", ""),
        "USER": params.pop("user", ""),
        "PASSWORD": params.pop("password", ""),
        "HOST": params.pop("host", ""),
        "PORT": params.pop("port", ""),
        "CONN_MAX_AGE": conn_max_age,
        "CONN_HEALTH_CHECKS": True,
        "OPTIONS": params,
    }


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
# What DATABASE_URL and BEANS_DATABASE_URL lead to: "" (PostgreSQL itself) or
# "pgbouncer-transaction" (pgbouncer in transaction pooling mode, scripts/pgbouncer), for a
# process whose work is single transactions, as the web tier's is. The one knob: it disables
# server-side cursors and leaves the session settings out of both entries (database_pooled).
DATABASE_POOLER = env_str("DATABASE_POOLER", "").strip()
DATABASES = {
    "default": database_from_url(
        DATABASE_URL,
        test_name=env_str("DATABASE_TEST_NAME", ""),
        pooler=DATABASE_POOLER,
    ),
}
# The bean service in a database of its own (optional): its accounts, ledger, outbox
# and message log live there, so "one transaction" still holds on each side.
BEANS_DATABASE_URL = env_str("BEANS_DATABASE_URL", "")
if BEANS_DATABASE_URL:
    DATABASES["beans"] = database_from_url(
        BEANS_DATABASE_URL, test_name=env_str("BEANS_DATABASE_TEST_NAME", ""), pooler=DATABASE_POOLER
    )
BEANS_DATABASE = "beans" if BEANS_DATABASE_URL else "default"
DATABASE_ROUTERS = ["project.routers.ServiceDatabaseRouter"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
