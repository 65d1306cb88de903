"""Where the services are: the default URLs, and the URLs of the databases and vhosts that the
demo, the tests, the bench and the chaos run make for themselves.

No Django here: the scripts and the Makefile use it before (or without) settings.

The default database URL names no user and no password: libpq then connects as the operating
system's user and reads the password from ``~/.pgpass`` (or ``PGPASSFILE``), where
``scripts/ensure-services`` keeps the one it generated for that role. So a machine with Debian's
default authentication (scram-sha-256 on TCP, peer on the socket) works without a secret in the
repository or on a command line. A ``DATABASE_URL`` or ``CELERY_BROKER_URL`` you set is used
instead, everywhere: a private database or vhost is made on *your* server, as *your* user, with
*your* options; only its name is the tool's.

    python -m project.environment database-url NAME   # your DATABASE_URL, database NAME
    python -m project.environment broker-url VHOST    # your CELERY_BROKER_URL, vhost VHOST
"""

from __future__ import annotations

import os
import sys
from typing import LiteralString
from urllib.parse import quote, unquote, urlsplit, urlunsplit

DEFAULT_DATABASE_URL = "postgres://127.0.0.1:5432/beans"
DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672//"


def url_with_path(url: str, name: str) -> str:
    """``url`` naming another database (or vhost) ``name``; user, password, options kept.

    A Celery failover list (``url1;url2``) keeps its first URL.
    """
    parts = urlsplit(url.split(";")[0])
    return urlunsplit(parts._replace(path="/" + quote(name, safe="")))


def database_url(name: str | None = None) -> str:
    """The database URL in force (yours or the default), naming database ``name`` if given."""
    url = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    return url if name is None else url_with_path(url, name)


def broker_url(vhost: str | None = None) -> str:
    """The broker URL in force (yours or the default), naming ``vhost`` if given."""
    url = os.environ.get("CELERY_BROKER_URL") or DEFAULT_BROKER_URL
    return url if vhost is None else url_with_path(url, vhost)


def broker_user() -> str:
    """The broker user of the URL in force: the one a private vhost grants its permissions to."""
    return unquote(urlsplit(broker_url()).username or "guest")


def libpq_url(url: str) -> str:
    """``url`` as libpq reads it: the ``postgresql`` scheme, which every libpq version accepts."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(scheme="postgresql")) if parts.scheme == "postgres" else url


def database_recreate(url: str) -> None:
    """Drop the database of ``url`` if it exists (its sessions ended) and create it empty."""
    database_drop(url)
    _maintenance(url, "CREATE DATABASE {}")


def database_drop(url: str) -> None:
    """Drop the database of ``url`` if it exists, ending its sessions first."""
    _maintenance(url, "DROP DATABASE IF EXISTS {} WITH (FORCE)")


def _maintenance(url: str, statement: LiteralString) -> None:
    """Run ``statement`` about the database of ``url`` from the server's ``postgres`` database."""
    import psycopg  # the commands that only print URLs need no driver
    from psycopg import sql

    name = unquote(urlsplit(url).path.lstrip("/"))
    if not name:
        raise ValueError(f"the URL names no database: {url!r}")
    with psycopg.connect(libpq_url(url_with_path(url, "postgres")), autocommit=True) as connection:
        connection.execute(sql.SQL(statement).format(sql.Identifier(name)))


def main(argv: list[str]) -> int:
    commands = {"database-url": database_url, "broker-url": broker_url}
    if len(argv) != 2 or argv[0] not in commands:
        sys.stderr.write(f"usage: python -m project.environment {{{'|'.join(commands)}}} NAME\n")
        return 2
    sys.stdout.write(commands[argv[0]](argv[1]) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
