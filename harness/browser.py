"""A headless Chromium to look at the web tier, for the browser tests.

``chromium_start`` drives Debian's ``chromium`` and ``chromium-driver`` (``scripts/ensure-browser``)
through selenium (requirements-dev.txt); ``browser_missing`` says what to install when they are not
there, so the browser tests skip instead of failing.
"""

import os
from typing import TYPE_CHECKING

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
