"""Real Celery worker and beat processes for the integration tests."""

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from django.conf import settings
from django.db import connections

from project.environment import url_with_path

REPO = Path(settings.BASE_DIR)


def wait_until(
    predicate: Callable[[], bool], *, timeout: float, interval: float = 0.2, what: str = ""
) -> None:
    """Poll ``predicate`` until it is true; fail the test with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")


def test_database_url(alias: str = "default") -> str:
    """The URL the settings were read from (user, password, host or socket, options kept), naming the test database."""
    source = settings.DATABASE_URL if alias == "default" else settings.BEANS_DATABASE_URL
    return url_with_path(source, connections[alias].settings_dict["NAME"])


def subprocess_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a subprocess that works on the test databases and vhost."""
    return {
        **os.environ,
        "DATABASE_URL": test_database_url(),
        **({"BEANS_DATABASE_URL": test_database_url("beans")} if "beans" in connections else {}),
        "DJANGO_ENV": "test",
        "PYTHONUNBUFFERED": "1",
        **(extra or {}),
    }


def run_manage_command(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> int:
    completed = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=REPO, env=subprocess_env(env), timeout=timeout, check=False
    )
    return completed.returncode


class CeleryProcess:
    """A ``celery -A project worker|beat`` subprocess in its own process group."""

    def __init__(
        self, kind: str, *, name: str = "w1", concurrency: int = 2, env: dict[str, str] | None = None
    ):
        self.kind, self.name, self.concurrency = kind, name, concurrency
        self.extra_env = env or {}
        self.workdir = Path(tempfile.mkdtemp(prefix=f"celery-{kind}-"))
        self.log_path = self.workdir / f"{kind}-{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        base = [sys.executable, "-m", "celery", "-A", "project", self.kind, "-l", "info"]
        if self.kind == "worker":
            return [
                *base,
                "-n",
                f"{self.name}@%h",
                "-c",
                str(self.concurrency),
                "--without-mingle",
                "--without-gossip",
            ]
        return [*base, "--schedule", str(self.workdir / "beat-schedule")]

    def start(self) -> "CeleryProcess":
        env = subprocess_env(self.extra_env)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command(), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        if self.kind == "worker":
            wait_until(
                lambda: b" ready." in self.log_path.read_bytes() or not self.alive(),
                timeout=60,
                what="worker",
            )
            if not self.alive():
                raise AssertionError(f"worker died on start:\n{self.log_tail()}")
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def children(self) -> list[int]:
        """Return the pids of the prefork pool's child processes."""
        assert self.process is not None
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(pid) for pid in path.read_text().split()] if path.exists() else []

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (main process and pool children)."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL whatever is left."""
        if self.alive():
            self.kill(signal.SIGTERM)
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def rabbitmq_users_run(
    *,
    vhost: str,
    users: dict[str, str],
    passwords: dict[str, str],
    argv: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``scripts/rabbitmq-users`` for ``vhost`` with these role users and passwords (``argv``
    in front of it, e.g. strace; ``env`` on top of this process's environment)."""
    return subprocess.run(
        [*argv, str(REPO / "scripts" / "rabbitmq-users")],
        env={
            **os.environ,
            **(env or {}),
            "RABBITMQ_VHOST": vhost,
            **{f"RABBITMQ_{role.upper()}_USER": user for role, user in users.items()},
            **{f"RABBITMQ_{role.upper()}_PASSWORD": password for role, password in passwords.items()},
        },
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
