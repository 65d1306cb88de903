"""The web tier as operators run it, and a headless Chromium to look at it.

``Gunicorn`` starts ``gunicorn -c project/gunicorn.conf.py`` with DEBUG off, as ``make web`` does;
``static_collected`` runs ``collectstatic`` first, as ``make web`` and the systemd unit do.
``chromium_start`` drives Debian's ``chromium`` and ``chromium-driver`` (``scripts/ensure-browser``)
through selenium (requirements-dev.txt); ``browser_missing`` says what to install when they are not
there, so the browser tests skip instead of failing.
"""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from .processes import REPO, run_manage_command, wait_until

if TYPE_CHECKING:
    from selenium.webdriver.chrome.webdriver import WebDriver

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1280,1600",
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 - a local test server
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


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
    """``gunicorn -c project/gunicorn.conf.py`` on a free port, in a process group of its own."""

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

        wait_until(answers, timeout=60, what="gunicorn to answer /healthz")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)


def browser_missing() -> str:
    """Return what to install for the browser tests, or "" when everything is there."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed: make venv (it installs requirements-dev.txt)"
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        return (
            f"{' and '.join(missing)} not found: run scripts/ensure-browser "
            "(apt-get install -y chromium chromium-driver)"
        )
    return ""


def chromium_start(*, network_log: bool = False) -> "WebDriver":
    """Start headless Chromium; with ``network_log``, ``driver.get_log("performance")`` has its CDP events."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    if network_log:
        options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    # On a failed start, selenium stops the chromedriver it launched.
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        driver.implicitly_wait(5)
    except Exception:
        driver.quit()
        raise
    return driver
