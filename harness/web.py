"""The web tier as operators run it: gunicorn with ``project/gunicorn.conf.py``, DEBUG off.

``Gunicorn`` serves the tests (one worker, on the test databases, a log in a folder of its own),
the bench and the chaos run (several workers, a log under the run's directory, ``api_key()``
for its database). ``static_collected`` runs ``collectstatic`` first, as ``make web`` and the
systemd unit do.
"""

import os
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from harness.polling import eventually
from harness.ports import free_port
from harness.processes import Child, run_cmd, run_manage_command


def get(url: str, *, timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    """GET ``url``: status, headers and body (an HTTP error status is an answer too)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - a local test server
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


class Gunicorn:
    """``gunicorn -c project/gunicorn.conf.py`` on a free port, started on creation.

    A ``Child`` (``child``) in a session of its own, logging to ``log_path`` (by default
    ``web.log`` in a fresh temporary folder); ``workers`` processes (``WEB_CONCURRENCY``) of
    ``threads`` threads each (``WEB_THREADS``; ``None`` leaves ``env``'s). ``wait_answering()``
    waits until ``/healthz`` answers; ``api_key()`` creates a key with ``manage.py api_keys
    create`` (its last line is the key); ``url(path)`` names a page.
    """

    def __init__(
        self,
        env: dict[str, str],
        *,
        log_path: Path | None = None,
        workers: int = 1,
        threads: int | None = None,
    ) -> None:
        self.port = free_port()
        self.log_path = log_path or Path(tempfile.mkdtemp(prefix="gunicorn-")) / "web.log"
        self.env = {
            **env,
            "PORT": str(self.port),
            "WEB_CONCURRENCY": str(workers),
            **({"WEB_THREADS": str(threads)} if threads is not None else {}),
            "DJANGO_DEBUG": "false",
        }
        argv = [sys.executable, "-m", "gunicorn", "-c", "project/gunicorn.conf.py"]
        self.child = Child("web", argv, self.env, self.log_path).start()

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_answering(self, timeout: float = 60) -> "Gunicorn":
        """Wait until ``/healthz`` answers 200; if gunicorn exits or does not answer in time, stop it and raise."""

        def answers() -> bool:
            if not self.child.alive():
                return True  # no use waiting: said below
            return get(self.url("/healthz"), timeout=2)[0] == 200

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
