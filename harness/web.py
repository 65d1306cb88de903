"""The web tier as operators run it: gunicorn with ``project/gunicorn.conf.py``, DEBUG off.

``WebTier`` is the chaos run's and the bench's (a ``Child`` logging under the run's directory,
several workers, ``api_key()`` for its database); ``Gunicorn`` is the tests' (one worker, on the
test databases). ``static_collected`` runs ``collectstatic`` first, as ``make web`` and the
systemd unit do.
"""

import os
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from harness.polling import eventually, poll_until
from harness.ports import free_port
from harness.processes import REPO, Child, run_cmd, run_manage_command


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    """GET ``url``: status, headers and body (an HTTP error status is an answer too)."""
    try:
        with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 - a local test server
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


class WebTier:
    """The web tier as operators run it: gunicorn with ``project/gunicorn.conf.py`` on a free port.

    ``start()`` waits until ``/healthz`` answers; ``api_key()`` creates a key with
    ``manage.py api_keys create`` (its last line is the key); ``url(path)`` names a page.
    """

    def __init__(self, *, env: dict[str, str], log_path: Path, workers: int = 2, threads: int = 1) -> None:
        self.port = free_port()
        self.env = {
            **env,
            "PORT": str(self.port),
            "WEB_CONCURRENCY": str(workers),
            "WEB_THREADS": str(threads),
            "DJANGO_DEBUG": "false",
        }
        self.child = Child(
            "web", [sys.executable, "-m", "gunicorn", "-c", "project/gunicorn.conf.py"], self.env, log_path
        )

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self, timeout: float = 60) -> "WebTier":
        self.child.start()

        def answers() -> bool:
            if not self.child.alive():
                return True  # no use waiting: said below
            with urllib.request.urlopen(self.url("/healthz"), timeout=2) as response:  # noqa: S310 - loopback
                return bool(response.status == 200)

        if not eventually(answers, timeout=timeout, interval=0.2) or not self.child.alive():
            self.stop()
            raise RuntimeError(
                f"gunicorn did not answer /healthz within {timeout:.0f} s: {self.child.tail()}"
            )
        return self

    def api_key(self, name: str, *scopes: str, rate_limit_per_s: int = 0) -> str:
        """A new API key (``manage.py api_keys create``), for the same database the web tier serves."""
        out = run_cmd(
            [
                sys.executable,
                "manage.py",
                "api_keys",
                "create",
                name,
                "--scopes",
                *(scopes or ("trades:write", "trades:read", "accounts:read")),
                "--rate-limit",
                str(rate_limit_per_s),
            ],
            env=self.env,
            timeout=60,
        )
        return out.strip().splitlines()[-1]

    def stop(self, timeout: float = 20) -> None:
        self.child.stop(timeout)


def static_collected(workdir: Path, env: dict[str, str]) -> dict[str, str]:
    """Run ``manage.py collectstatic`` into ``workdir/static``; return ``env`` serving only that.

    The project's STATIC_ROOT is the checkout's ``.run/static``, shared with ``make web``; a
    settings module in ``workdir`` points it at the test's own folder and turns
    WHITENOISE_USE_FINDERS off, as production has it, so what is served is what was collected.
    """
    static_root = workdir / "static"
    (workdir / "collected_static_settings.py").write_text(
        "from project.settings import *  # noqa: F403\n\n"
        f"STATIC_ROOT = {str(static_root)!r}\n"
        "WHITENOISE_USE_FINDERS = False\n"
    )
    python_path = [str(workdir), *filter(None, [env.get("PYTHONPATH")])]
    env = {
        **env,
        "DJANGO_SETTINGS_MODULE": "collected_static_settings",
        "PYTHONPATH": os.pathsep.join(python_path),
    }
    code = run_manage_command("collectstatic", "--noinput", "-v0", env=env, timeout=120)
    if code != 0:
        raise AssertionError(f"manage.py collectstatic exited {code}")
    return env


class Gunicorn:
    """``gunicorn -c project/gunicorn.conf.py`` of a test on a free port, in a process group of its own."""

    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        self.log_path = Path(tempfile.mkdtemp(prefix="gunicorn-")) / "web.log"
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "project/gunicorn.conf.py"],
            cwd=REPO,
            env={**env, "PORT": str(self.port), "WEB_CONCURRENCY": "1", "DJANGO_DEBUG": "false"},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_answering(self) -> None:
        def answers() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"gunicorn exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                return get(self.url("/healthz"))[0] == 200
            except OSError:
                return False

        poll_until(answers, timeout=60, interval=0.2, what="gunicorn to answer /healthz")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
