"""A PostgreSQL as Debian installs it: ``scripts/ensure-services`` then ``scripts/demo`` work.

A throwaway cluster is made with ``pg_createcluster``'s defaults (peer on the socket,
scram-sha-256 on TCP: no login without a password) on a port of its own, so nothing here
touches the system cluster. The set-up makes this OS user's role with a generated password kept
in a password file of the test's own (``PGPASSFILE``); then the demo runs end to end against
that cluster through the ``DATABASE_URL`` the test sets, which it must respect. The cluster is
dropped afterwards, whatever happens.
"""

import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from django.test import SimpleTestCase, tag

from harness.processes import REPO

ENSURE_SERVICES = REPO / "scripts" / "ensure-services"
DEMO = REPO / "scripts" / "demo"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def postgres_version() -> str:
    versions = sorted(os.listdir("/etc/postgresql"), key=lambda v: [int(p) for p in v.split(".")])
    return versions[-1]


@tag("integration", "fresh_machine", "broker")
class DebianDefaultAuthenticationTests(SimpleTestCase):
    def setUp(self) -> None:
        if os.geteuid() != 0 or shutil.which("pg_createcluster") is None:
            self.skipTest("needs root and Debian's postgresql-common (pg_createcluster)")
        self.version = postgres_version()
        self.cluster = f"fresh{os.getpid()}"
        self.port = free_port()
        workdir = Path(tempfile.mkdtemp(prefix="fresh-machine-"))
        self.addCleanup(shutil.rmtree, workdir, ignore_errors=True)
        self.passfile = workdir / "pgpass"
        self.run_dir = workdir / "run"
        subprocess.run(
            ["pg_createcluster", self.version, self.cluster, "-p", str(self.port), "--start"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        self.addCleanup(
            subprocess.run,
            ["pg_dropcluster", "--stop", self.version, self.cluster],
            capture_output=True,
            timeout=120,
        )

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            # A developer's or the suite's own settings would point the run elsewhere.
            if not key.startswith(("DATABASE_", "BEANS_", "DJANGO_", "CELERY_", "RELIABILITY_", "TRADES_"))
        }
        env.update(PGPASSFILE=str(self.passfile), **extra)
        return env

    def psql(self, database: str, sql: str) -> subprocess.CompletedProcess[str]:
        """``sql`` over TCP as this OS user, with the test's password file."""
        return subprocess.run(
            ["psql", "-X", "-h", "127.0.0.1", "-p", str(self.port), "-d", database, "-tAc", sql],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=60,
        )

    def login(self, database: str = "postgres") -> subprocess.CompletedProcess[str]:
        return self.psql(database, "select current_user")

    def ensure_services(self) -> str:
        done = subprocess.run(
            [str(ENSURE_SERVICES)],
            env=self.env(PGPORT=str(self.port), PG_CLUSTER=self.cluster),
            capture_output=True,
            text=True,
            timeout=300,
        )
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        return done.stdout

    def test_setup_then_the_demo_work_against_debians_default_authentication(self) -> None:
        refused = self.login()
        self.assertNotEqual(
            refused.returncode, 0, "a Debian cluster lets nobody in over TCP without a password"
        )
        self.assertIn("password", refused.stderr)

        role = pwd.getpwuid(os.geteuid()).pw_name
        first = self.ensure_services()
        self.assertIn(f"created role {role}", first)
        self.assertIn("created database beans", first)
        self.assertEqual(oct(self.passfile.stat().st_mode & 0o777), "0o600")
        password = self.passfile.read_text().strip().rsplit(":", 1)[1]
        self.assertNotIn(password, first, "the password is never printed")
        self.assertEqual(self.login("beans").stdout.strip(), role)

        again = self.ensure_services()
        self.assertIn("postgresql: running\n", again, "a second run changes nothing")
        self.assertEqual(self.passfile.read_text().count("\n"), 1, "the kept password is reused")

        demo = subprocess.run(
            [str(DEMO)],
            cwd=REPO,
            env=self.env(
                DATABASE_URL=f"postgres://127.0.0.1:{self.port}/beans",
                DEMO_TRADES="60",
                DEMO_DATABASE="beans_demo",
                DEMO_VHOST=f"{self.cluster}-demo",
                DEMO_RUN_DIR=str(self.run_dir),
                VENV=str(Path(sys.executable).parent.parent),
            ),
            capture_output=True,
            text=True,
            timeout=600,
        )
        self.assertEqual(demo.returncode, 0, demo.stdout[-3000:] + demo.stderr[-3000:])
        self.assertIn("verify: OK", demo.stdout)
        placed = self.psql("beans_demo", "select count(*) from trades_trade where status = 'deducted'")
        self.assertEqual(
            placed.stdout.strip(), "60", "the demo ran on the throwaway cluster, not the system one"
        )
