"""The database settings (``project.settings.database``): DATABASE_URL read whole, and every
session's deadlines (keepalives, connect, idle in transaction, TCP user timeout).

The library's own deadlines, on the broker and its claims, are in ``tests/reliability/test_deadlines.py``.
"""

import socket

import psycopg
from django.core.exceptions import ImproperlyConfigured
from django.db import connection
from django.db.backends.postgresql.base import DatabaseWrapper
from django.test import TestCase

from project.settings import database_from_url


class DatabaseSessionDeadlineTests(TestCase):
    def test_every_session_has_keepalives_and_an_idle_in_transaction_timeout(self) -> None:
        params = connection.get_connection_params()
        self.assertEqual((params["keepalives"], params["connect_timeout"]), (1, 5))
        # A session as every process opens it from the settings (the test runner lifts the
        # idle-in-transaction deadline for its own sessions only, see tests/runner.py).
        params["options"] = params["options"].replace(" -c idle_in_transaction_session_timeout=0", "")
        with psycopg.connect(**params) as session:
            shown = {
                name: session.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
                for name in ("idle_in_transaction_session_timeout", "tcp_keepalives_idle", "tcp_user_timeout")
            }
        self.assertEqual(
            shown,
            {
                "idle_in_transaction_session_timeout": "30s",
                "tcp_keepalives_idle": "5",
                "tcp_user_timeout": "15000",
            },
        )


class DatabaseUrlTests(TestCase):
    """DATABASE_URL is read by dj-database-url: its options reach the driver, none is dropped."""

    def test_query_options_reach_the_settings_and_override_the_defaults(self) -> None:
        config = database_from_url(
            "postgres://app:p%40ss@db.example:6432/beans?sslmode=require&connect_timeout=3"
            "&options=-c%20search_path%3Dbeans%20-c%20idle_in_transaction_session_timeout%3D5s"
        )
        self.assertEqual((config["USER"], config["PASSWORD"], config["HOST"]), ("app", "p@ss", "db.example"))
        options = config["OPTIONS"]
        self.assertEqual((options["sslmode"], options["connect_timeout"]), ("require", 3))
        self.assertIn("-c search_path=beans", options["options"])
        self.assertIn("-c idle_in_transaction_session_timeout=5s", options["options"])
        self.assertNotIn("idle_in_transaction_session_timeout=30000ms", options["options"])
        self.assertIn("-c tcp_user_timeout=15000", options["options"], "the other deadlines stay")

    def test_a_socket_directory_is_kept_as_the_host(self) -> None:
        config = database_from_url("postgres:///beans?host=/var/run/postgresql")
        self.assertEqual(config["OPTIONS"]["host"], "/var/run/postgresql")

    def test_a_multi_host_url_keeps_every_host_and_the_session_attributes(self) -> None:
        config = database_from_url(
            "postgresql://app:p%40ss@10.0.0.1:5441,10.0.0.2:5442/beans"
            "?target_session_attrs=read-write&connect_timeout=2"
        )
        self.assertEqual(
            (config["NAME"], config["USER"], config["PASSWORD"], config["HOST"], config["PORT"]),
            ("beans", "app", "p@ss", "10.0.0.1,10.0.0.2", "5441,5442"),
        )
        options = config["OPTIONS"]
        self.assertEqual((options["target_session_attrs"], options["connect_timeout"]), ("read-write", "2"))
        self.assertIn("-c tcp_user_timeout=15000", options["options"], "the deadlines apply to every host")
        self.assertTrue(config["CONN_HEALTH_CHECKS"], "a connection to a dead primary is replaced")

    def test_a_multi_host_url_connects_to_the_first_host_that_takes_writes(self) -> None:
        current = connection.settings_dict
        host, port = current["HOST"] or "127.0.0.1", current["PORT"] or 5432
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))  # bound, never listening: the connection is refused
        self.addCleanup(closed.close)
        url = (
            f"postgresql://{current['USER']}@127.0.0.1:{closed.getsockname()[1]},{host}:{port}/"
            f"{current['NAME']}?target_session_attrs=read-write"
        )
        wrapper = DatabaseWrapper({**current, **database_from_url(url)}, alias="multi-host-test")
        self.addCleanup(wrapper.close)
        with wrapper.cursor() as cursor:
            cursor.execute("SELECT inet_server_port(), pg_is_in_recovery()")
            self.assertEqual(cursor.fetchone(), (int(port), False))

    def test_other_databases_are_refused(self) -> None:
        for url in ("mysql://u@h/db", "nosuch://h/db", "mysql://u@h1,h2/db"):
            with self.subTest(url), self.assertRaises(ImproperlyConfigured):
                database_from_url(url)

    def test_an_option_from_the_url_reaches_a_live_session(self) -> None:
        current = connection.settings_dict
        url = (
            f"postgres://{current['USER']}@{current['HOST'] or '127.0.0.1'}:{current['PORT'] or 5432}/"
            f"{current['NAME']}?application_name=beans-url-test&sslmode=disable"
        )
        wrapper = DatabaseWrapper({**current, **database_from_url(url)}, alias="url-test")
        self.addCleanup(wrapper.close)
        with wrapper.cursor() as cursor:
            cursor.execute(
                "SELECT current_setting('application_name'), current_setting('tcp_keepalives_idle')"
            )
            self.assertEqual(cursor.fetchone(), ("beans-url-test", "5"))
