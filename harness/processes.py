"""Subprocesses in sessions of their own, logging to a file: workers, beat, web tiers, commands.

``Child`` is any such process (the chaos run and the bench keep many); ``CeleryProcess`` is a
worker or beat of the integration tests, on the test databases and vhost. Every subprocess
starts in its own session, so its pool children are signalled with it; every wait is bounded.
``orphans`` finds what a killed run left behind, by the dead pid in its name.
"""

import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from contextlib import suppress
from pathlib import Path

from harness.environment import subprocess_env
from harness.polling import poll_until

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent


def run_cmd(argv: list[str], *, env: dict[str, str], timeout: float, check: bool = True) -> str:
    """Run ``argv`` in the repository; its standard output (RuntimeError with both outputs if it failed)."""
    completed = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO, check=False
    )
    if check and completed.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} exited {completed.returncode}:\n{completed.stdout}\n{completed.stderr}"
        )
    return completed.stdout


def run_manage_command(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> int:
    """Run ``manage.py`` on the test databases and vhost (``subprocess_env``); its exit code."""
    completed = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=REPO, env=subprocess_env(env), timeout=timeout, check=False
    )
    return completed.returncode


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def orphans(names: Iterable[str], pattern: str) -> list[str]:
    """The ``names`` that match ``pattern``, whose first group is the pid of a process now gone.

    Runs name what they create after their pid (a vhost ``test-<pid>``, a database
    ``chaos_t<pid>``), so a later run can remove what a killed one left behind.
    """
    found = []
    for name in names:
        match = re.fullmatch(pattern, name)
        if match and not pid_alive(int(match.group(1))):
            found.append(name)
    return found


def pool_children(pid: int) -> list[int]:
    """The pids of the children of ``pid`` (a prefork pool's processes); none once it is gone."""
    with suppress(OSError):
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


class Child:
    """A subprocess in its own session (its pool children share its process group), logging to a file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name, self.argv, self.env, self.log_path = name, argv, env, log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.proxied = False  # reaches the broker and the database through the chaos run's proxies

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def appname(self) -> str:
        return self.env.get("PGAPPNAME", "")

    def start(self) -> "Child":
        with self.log_path.open("ab") as log_file:
            log_file.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(self.argv)}\n".encode())
            log_file.flush()
            self.process = subprocess.Popen(
                self.argv,
                cwd=REPO,
                env=self.env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.started_at = time.monotonic()
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def children(self) -> list[int]:
        """The pids of the prefork pool's processes."""
        return pool_children(self.pid) if self.alive() else []

    def signal(self, sig: int) -> None:
        if self.process is not None:
            with suppress(ProcessLookupError, PermissionError):
                os.kill(self.process.pid, sig)

    def signal_group(self, sig: int) -> None:
        if self.process is not None:
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, sig)

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for the main process to exit; True if it did."""
        if self.process is None:
            return True
        try:
            self.process.wait(timeout=max(timeout, 0))
        except subprocess.TimeoutExpired:
            return False
        return True

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM (warm shutdown), then SIGKILL the whole process group (orphaned children too)."""
        if self.process is None:
            return
        if self.alive():
            self.signal_group(signal.SIGTERM)
            if not self.wait(timeout):
                logger.warning("%s did not stop within %.0fs: killing it", self.name, timeout)
        self.signal_group(signal.SIGKILL)
        self.wait(10)

    def tail(self, lines: int = 20) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


class CeleryProcess:
    """A ``celery -A project worker|beat`` subprocess of the tests, in its own process group."""

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
            poll_until(
                lambda: b" ready." in self.log_path.read_bytes() or not self.alive(),
                timeout=60,
                interval=0.2,
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
        return pool_children(self.process.pid)

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
