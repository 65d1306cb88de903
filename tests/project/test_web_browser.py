"""The admin and the pipeline health page in headless Chromium, served as operators serve them.

``collectstatic``, then gunicorn with ``project/gunicorn.conf.py`` and DEBUG off (``make web``) on
the test databases; whitenoise serves only what was collected. A superuser logs in through the
admin's login page; the stylesheets must arrive (200, text/css) and be applied, on the admin and
on the health page with its chart. The screenshots stay in a ``/tmp/web-browser-screenshots-*``
folder for a human to look at.

Needs Debian's ``chromium`` and ``chromium-driver`` (``scripts/ensure-browser`` installs them)
and ``selenium`` (requirements-dev.txt). Without them the test skips and says what to install.
"""

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from django.contrib.auth.models import User
from django.templatetags.static import static
from django.test import TransactionTestCase, override_settings, tag
from django.urls import reverse
from django.utils import timezone

from harness.browser import browser_missing, chromium_start
from harness.environment import subprocess_env
from harness.web import Gunicorn, static_collected
from tests.reliability.ops.test_health import ALPHA_HANDLER, BETA_HANDLER, pipeline_rows_write

PASSWORD = "correct horse battery staple"
TRANSPARENT = ("rgba(0, 0, 0, 0)", "transparent")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@tag("browser")
@override_settings(RELIABILITY_RELAY_FAST_PATH=False)
class AdminInChromiumOnGunicornTests(TransactionTestCase):
    # Committed rows (no test transaction), so the gunicorn process sees them; both databases,
    # since the health page reads the producer's and the consumer's (when they are two).
    databases = "__all__"

    def setUp(self) -> None:
        missing = browser_missing()
        if missing:
            self.skipTest(missing)
        workdir = Path(tempfile.mkdtemp(prefix="web-browser-"))
        self.addCleanup(shutil.rmtree, workdir, ignore_errors=True)
        env = static_collected(workdir, subprocess_env())
        self.static_root = workdir / "static"
        self.server = Gunicorn(env)
        self.addCleanup(self.server.stop)
        self.server.wait_answering()
        self.driver = chromium_start(network_log=True)
        self.addCleanup(self.driver.quit)
        self.screenshots = Path(tempfile.mkdtemp(prefix="web-browser-screenshots-"))

    def script(self, code: str, *args: Any) -> Any:
        return self.driver.execute_script(code, *args)

    def style(self, selector: str, prop: str) -> str:
        """The computed value of ``prop`` (camelCase) on the first element ``selector`` finds."""
        return str(self.script(f"return getComputedStyle(document.querySelector({selector!r}))[{prop!r}];"))

    def responses(self) -> dict[str, dict[str, Any]]:
        """The responses Chromium received since the last call, by URL (its network log)."""
        received = {}
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.responseReceived":
                params = message["params"]
                received[params["response"]["url"]] = params["response"]
        return received

    def screenshot(self, name: str) -> None:
        path = self.screenshots / f"{name}.png"
        self.assertTrue(self.driver.save_screenshot(str(path)))
        self.assertEqual(path.read_bytes()[:8], PNG_SIGNATURE)

    def assert_admin_styled(self) -> None:
        """The admin's stylesheet is applied: only it defines --header-bg and colours the header."""
        self.assertTrue(
            self.script(
                "return getComputedStyle(document.documentElement).getPropertyValue('--header-bg').trim();"
            )
        )
        self.assertNotIn(self.style("#header", "backgroundColor"), TRANSPARENT)
        self.assertEqual(self.style("#header", "display"), "flex")

    def log_in(self) -> None:
        """Fill in and send the login form the browser shows."""
        from selenium.webdriver.common.by import By

        self.driver.find_element(By.ID, "id_username").send_keys("root")
        self.driver.find_element(By.ID, "id_password").send_keys(PASSWORD)
        self.driver.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
        self.driver.find_element(By.ID, "user-tools")  # waits until logged in

    def test_superuser_logs_in_and_sees_the_styled_admin_and_health_chart(self) -> None:
        from selenium.webdriver.common.by import By

        pipeline_rows_write(self, now=timezone.now())
        User.objects.create_superuser("root", "root@example.com", PASSWORD)
        base_css = static("admin/css/base.css")
        self.assertTrue((self.static_root / "admin/css/base.css").is_file(), "collectstatic collected it")

        self.driver.get(self.server.url(reverse("admin:login")))
        self.driver.find_element(By.ID, "id_username")
        links = self.script("return [...document.querySelectorAll('link[rel=stylesheet]')].map(l => l.href);")
        self.assertIn(self.server.url(base_css), links)
        # Chromium reports no response for a stylesheet it blocks (a 404 page is not text/css).
        received = self.responses()
        self.assertEqual(
            {
                url: (received[url]["status"], received[url]["mimeType"]) if url in received else None
                for url in links
            },
            dict.fromkeys(links, (200, "text/css")),
        )
        self.assert_admin_styled()
        self.screenshot("admin-login")

        self.log_in()
        self.assertEqual(self.driver.current_url, self.server.url(reverse("admin:index")))
        self.assert_admin_styled()
        self.driver.find_element(By.LINK_TEXT, "Pipeline health")

        self.driver.get(self.server.url(reverse("pipeline-health")))
        chart = self.driver.find_element(By.CSS_SELECTOR, "#health-throughput svg.health-chart")
        self.assertEqual(self.driver.title.split(" | ")[0], "Pipeline health")
        self.assert_admin_styled()
        self.assertTrue(chart.is_displayed())
        self.assertGreater(chart.size["width"], 300)
        lines = chart.find_elements(By.CSS_SELECTOR, "polyline")
        self.assertEqual(
            [line.find_element(By.XPATH, "..").get_attribute("data-series") for line in lines],
            ["all handlers", ALPHA_HANDLER, BETA_HANDLER],
        )
        lengths = self.script(
            "return [...arguments[0].querySelectorAll('polyline')].map(l => l.getTotalLength());", chart
        )
        self.assertTrue(all(length > 0 for length in lengths), lengths)
        # The page's own styles: the figures in a row of boxes, the total line dashed and unfilled.
        self.assertEqual(self.style("#health-totals", "display"), "flex")
        self.assertEqual(self.style("#health-totals li", "borderTopLeftRadius"), "4px")
        self.assertEqual(self.style("polyline.total", "strokeDasharray"), "6px, 3px")
        self.assertEqual(self.style("polyline.total", "fill"), "none")
        self.screenshot("pipeline-health")
