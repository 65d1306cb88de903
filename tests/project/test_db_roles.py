"""Database least privilege: ``scripts/postgres-roles`` against the real PostgreSQL.

A throwaway database is migrated, the script hands it to an owner role and grants the app and
readonly roles exactly their privileges; then the project itself runs as the app role (accounts
created, trades placed), and the roles are shown to be refused everything else. Database and
roles are dropped afterwards, whatever happens.
"""

import os
import secrets
import subprocess
import sys

import psycopg
from django.test import SimpleTestCase, tag

from harness.processes import REPO
from project.environment import database_drop, database_recreate, database_url

SCRIPT = REPO / "scripts" / "postgres-roles"
HOST, PORT = "127.0.0.1", "5432"


def psql(database: str, sql: str) -> None:
    subprocess.run(
        ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", HOST, "-p", PORT, "-d", database, "-c", sql],
        check=True,
        capture_output=True,
        timeout=60,
    )


@tag("integration")
class PostgresRolesTests(SimpleTestCase):
    def setUp(self) -> None:
        suffix = f"{os.getpid()}_{secrets.token_hex(3)}"
        self.database = f"roles_{suffix}"
        self.roles = {kind: f"roles_{suffix}_{kind}" for kind in ("owner", "app", "readonly")}
        self.passwords = {kind: secrets.token_urlsafe(18) for kind in self.roles}
        database_recreate(self.url(None))
        self.addCleanup(self.drop)
        self.manage("migrate", "--noinput", "-v0", role=None)

    def drop(self) -> None:
        database_drop(self.url(None))
        for role in self.roles.values():
            subprocess.run(
                [
                    "psql",
                    "-X",
                    "-q",
                    "-h",
                    HOST,
                    "-p",
                    PORT,
                    "-d",
                    "postgres",
                    "-c",
                    f"DROP ROLE IF EXISTS {role}",
                ],
                timeout=60,
                capture_output=True,
            )

    def url(self, kind: str | None) -> str:
        if kind is None:
            return database_url(self.database)  # the superuser the suite runs as
        return f"postgres://{self.roles[kind]}:{self.passwords[kind]}@{HOST}:{PORT}/{self.database}"

    def manage(self, *args: str, role: str | None) -> str:
        env = {
            **os.environ,
            "DATABASE_URL": self.url(role),
            "DJANGO_ENV": "development",
            "RELIABILITY_RELAY_FAST_PATH": "false",  # the database alone: nothing is published
            "LOG_LEVEL": "WARNING",
        }
        env.pop("BEANS_DATABASE_URL", None)
        done = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        self.assertEqual(done.returncode, 0, f"manage.py {' '.join(args)} as {role}:\n{done.stderr[-3000:]}")
        return done.stdout

    def run_script(self) -> str:
        env = {
            **os.environ,
            "PG_DATABASE": self.database,
            "PG_OWNER_ROLE": self.roles["owner"],
            "PG_APP_ROLE": self.roles["app"],
            "PG_READONLY_ROLE": self.roles["readonly"],
            "PG_OWNER_PASSWORD": self.passwords["owner"],
            "PG_APP_PASSWORD": self.passwords["app"],
            "PG_READONLY_PASSWORD": self.passwords["readonly"],
        }
        done = subprocess.run([str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120)
        self.assertEqual(done.returncode, 0, done.stderr)
        for password in self.passwords.values():
            self.assertNotIn(password, done.stdout + done.stderr)
        return done.stdout

    def connect(self, kind: str) -> psycopg.Connection:
        connection = psycopg.connect(self.url(kind).replace("postgres://", "postgresql://"), autocommit=True)
        self.addCleanup(connection.close)
        return connection

    def assert_refused(self, kind: str, sql: str) -> None:
        with self.subTest(role=kind, sql=sql), self.assertRaises(psycopg.errors.InsufficientPrivilege):
            self.connect(kind).execute(sql)

    def test_the_app_runs_as_the_app_role_and_every_role_is_refused_the_rest(self) -> None:
        self.run_script()
        self.run_script()  # idempotent

        self.manage("create_accounts", "--count", "2", "--balance", "1000", role="app")
        self.manage("place_trades", "--count", "3", "--beans", "10", "--no-progress", role="app")
        readonly = self.connect("readonly")
        self.assertEqual(readonly.execute("SELECT count(*) FROM trades_trade").fetchone(), (3,))
        self.assertEqual(readonly.execute("SELECT count(*) FROM reliability_outboxmessage").fetchone(), (3,))

        for sql in (
            "DROP TABLE trades_trade",
            "ALTER TABLE beans_account DROP CONSTRAINT account_balance_nonnegative",
            "TRUNCATE beans_ledgerentry",
            "CREATE TABLE intruder (i int)",
        ):
            self.assert_refused("app", sql)
        for sql in (
            "INSERT INTO trades_trade (id) VALUES (1)",
            "DELETE FROM trades_trade",
            "CREATE TABLE x (i int)",
        ):
            self.assert_refused("readonly", sql)

        # The owner migrates (what a deploy runs), and what it creates the app can use.
        self.manage("migrate", "--noinput", "-v0", role="owner")
        owner = self.connect("owner")
        owner.execute("CREATE TABLE later_table (i int)")
        self.connect("app").execute("INSERT INTO later_table VALUES (1)")
        self.assert_refused("app", "DROP TABLE later_table")

        # A privilege someone widened by hand is taken back by the next run.
        psql(self.database, f"GRANT TRUNCATE ON beans_ledgerentry TO {self.roles['app']}")
        self.run_script()
        self.assert_refused("app", "TRUNCATE beans_ledgerentry")
