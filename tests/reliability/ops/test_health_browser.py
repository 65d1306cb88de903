"""The health page in a real browser: log in to the admin, follow the link, read the figures and the chart.

Needs Debian's ``chromium`` and ``chromium-driver`` (``scripts/ensure-browser`` installs them)
and ``selenium`` (requirements-dev.txt). Without them the tests skip and say what to install.
"""

import unittest
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.contrib.staticfiles.testing import StaticLiveServerTestCase
from django.test import override_settings, tag
from django.urls import reverse
from django.utils import timezone

from harness.browser import browser_missing, chromium_start
from reliability.models import OutboxMessage, StreamCounter, StreamWatermark
from reliability.ops.queues import queue_depths_record
from reliability.produce.publisher import publisher
from tests.reliability.ops.test_health import (
    ALPHA,
    ALPHA_HANDLER,
    BETA,
    BETA_HANDLER,
    broker_queue_depth,
    pipeline_rows_write,
)

SCREENSHOTS = Path(settings.BASE_DIR) / ".run" / "screenshots"
PASSWORD = "correct horse battery staple"


@tag("browser", "broker")
@override_settings(RELIABILITY_RELAY_FAST_PATH=False)
class HealthPageBrowserTests(StaticLiveServerTestCase):
    databases = "__all__"
    driver: Any

    @classmethod
    def setUpClass(cls) -> None:
        missing = browser_missing()
        if missing:
            raise unittest.SkipTest(missing)
        super().setUpClass()
        try:
            cls.driver = chromium_start()
        except Exception:
            super().tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls) -> None:
        cls.driver.quit()
        super().tearDownClass()

    def setUp(self) -> None:
        publisher().topology_declare()
        queue_depths_record()  # what beat does every few seconds: the page reads the recorded depths
        pipeline_rows_write(self, now=timezone.now())
        User.objects.create_user("operator", password=PASSWORD, is_staff=True)

    def log_in(self) -> None:
        from selenium.webdriver.common.by import By

        self.driver.get(self.live_server_url + reverse("admin:login"))
        self.driver.find_element(By.ID, "id_username").send_keys("operator")
        self.driver.find_element(By.ID, "id_password").send_keys(PASSWORD)
        self.driver.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
        self.driver.find_element(By.ID, "user-tools")  # waits until logged in

    def save_screenshot(self, name: str) -> None:
        """Keep what the browser showed in .run/screenshots/ (not committed), for a human to look at."""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self.driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))

    def cell(self, row: str, field: str) -> str:
        from selenium.webdriver.common.by import By

        return str(self.driver.find_element(By.CSS_SELECTOR, f'{row} td[data-field="{field}"]').text)

    def test_staff_follow_the_admin_link_and_see_the_figures_and_the_chart(self) -> None:
        from selenium.webdriver.common.by import By

        self.log_in()
        self.driver.get(self.live_server_url + reverse("admin:index"))
        self.save_screenshot("admin-index")
        self.driver.find_element(By.LINK_TEXT, "Pipeline health").click()
        self.driver.find_element(By.ID, "health-streams")

        self.assertEqual(self.driver.title.split(" | ")[0], "Pipeline health")
        for stream in (ALPHA, BETA):
            counter = StreamCounter.objects.get(stream=stream)
            watermark = StreamWatermark.objects.using(settings.BEANS_DATABASE).get(stream=stream)
            pending = OutboxMessage.objects.filter(stream=stream, status=OutboxMessage.Status.PENDING).count()
            row = f'tr[data-stream="{stream}"]'
            with self.subTest(stream=stream):
                self.assertEqual(self.cell(row, "produced_seq"), str(counter.last_seq))
                self.assertEqual(self.cell(row, "consumed_watermark"), str(watermark.watermark))
                self.assertEqual(self.cell(row, "lag"), str(counter.last_seq - watermark.watermark))
                self.assertEqual(self.cell(row, "gaps_open"), str(watermark.gaps_open))
                self.assertEqual(self.cell(row, "outbox_pending"), str(pending))
        self.assertEqual(self.cell(f'tr[data-stream="{ALPHA}"]', "lag"), "3")
        self.assertEqual(self.cell("#health-streams-total", "outbox_pending"), "7")
        self.assertEqual(self.cell(f'tr[data-handler="{ALPHA_HANDLER}"]', "open"), "2")
        self.assertEqual(self.cell(f'tr[data-handler="{BETA_HANDLER}"]', "open"), "1")
        for queue in ("beans", "trades"):
            self.assertEqual(self.cell(f'tr[data-queue="{queue}"]', "depth"), str(broker_queue_depth(queue)))

        chart = self.driver.find_element(By.CSS_SELECTOR, "#health-throughput svg")
        self.assertTrue(chart.is_displayed())
        self.assertGreater(chart.size["width"], 300)
        lines = chart.find_elements(By.CSS_SELECTOR, "polyline")
        self.assertEqual(
            [line.find_element(By.XPATH, "..").get_attribute("data-series") for line in lines],
            ["all handlers", ALPHA_HANDLER, BETA_HANDLER],
        )
        # Laid out by the browser: each line has a length, and the total line rises off the x axis.
        lengths = self.driver.execute_script(
            "return [...arguments[0].querySelectorAll('polyline')].map(l => l.getTotalLength());", chart
        )
        self.assertTrue(all(length > 0 for length in lengths), lengths)
        heights = self.driver.execute_script(
            "return [...arguments[0].querySelectorAll('polyline')].map(l => l.getBBox().height);", chart
        )
        self.assertGreater(heights[0], 0)
        self.assertEqual(
            self.driver.find_element(By.CSS_SELECTOR, 'meta[http-equiv="refresh"]').get_attribute("content"),
            "10",
        )
        self.save_screenshot("pipeline-health")

    def test_anonymous_visitors_get_the_login_page(self) -> None:
        from selenium.webdriver.common.by import By

        self.driver.delete_all_cookies()
        self.driver.get(self.live_server_url + reverse("pipeline-health"))
        self.driver.find_element(By.ID, "id_username")
        self.assertIn(reverse("admin:login"), self.driver.current_url)
        self.assertFalse(self.driver.find_elements(By.ID, "health-streams"))
