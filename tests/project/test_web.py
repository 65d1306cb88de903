"""The web tier as operators run it: gunicorn with the project's config, DEBUG off.

A real gunicorn serves the test database and vhost: liveness, readiness (and a readiness that
names the database and the broker it cannot reach), the admin's stylesheet through whitenoise,
and the API's JSON refusals. The proxy header keeps HTTPS redirects from looping behind a proxy.
"""

import json
import os
import subprocess
import sys
import time
from typing import Any

from django.test import SimpleTestCase, TransactionTestCase, override_settings, tag

from harness.environment import subprocess_env
from harness.ports import free_port
from harness.processes import REPO
from harness.web import Gunicorn, get


def closed_port() -> int:
    return free_port()  # nothing listens there once the probe is closed


@tag("integration")
class WebTierTests(TransactionTestCase):
    def serve(self, **extra: str) -> Gunicorn:
        server = Gunicorn(subprocess_env(extra))
        self.addCleanup(server.stop)
        server.wait_answering()
        return server

    def test_gunicorn_serves_readiness_static_files_and_json_refusals_with_debug_off(self) -> None:
        server = self.serve()
        status, _, body = get(server.url("/readyz"))
        self.assertEqual((status, json.loads(body)), (200, {"status": "ok"}))

        status, headers, body = get(server.url("/static/admin/css/base.css"))
        self.assertEqual(status, 200, "whitenoise serves the admin's stylesheet with DEBUG off")
        self.assertTrue(headers["Content-Type"].startswith("text/css"), headers)
        self.assertIn(b"body", body)

        status, headers, body = get(server.url("/api/trades/999999999/"))
        self.assertEqual(status, 401)  # the API answers no one without a key, in JSON
        self.assertIn("API key", json.loads(body)["error"])

    def test_readiness_names_the_database_and_the_broker_it_cannot_reach(self) -> None:
        server = self.serve(
            DATABASE_URL=f"postgres://127.0.0.1:{closed_port()}/nowhere?connect_timeout=2",
            CELERY_BROKER_URL=f"amqp://guest:guest@127.0.0.1:{closed_port()}//",
        )
        started = time.monotonic()
        status, _, body = get(server.url("/readyz"))
        answer: dict[str, Any] = json.loads(body)
        self.assertEqual(status, 503)
        self.assertEqual(answer["status"], "unavailable")
        self.assertEqual(sorted(answer["failing"]), ["broker", "database:default"])
        self.assertLess(time.monotonic() - started, 25, "each check has a short deadline")
        self.assertEqual(get(server.url("/healthz"))[0], 200, "the process itself still answers")


class ProxySslHeaderTests(SimpleTestCase):
    @override_settings(SECURE_SSL_REDIRECT=True, SECURE_PROXY_SSL_HEADER=("HTTP_X_FORWARDED_PROTO", "https"))
    def test_a_request_the_proxy_marks_https_is_not_redirected_again(self) -> None:
        self.assertEqual(self.client.get("/healthz", HTTP_X_FORWARDED_PROTO="https").status_code, 200)
        self.assertEqual(self.client.get("/healthz").status_code, 301)

    def test_the_setting_reads_the_environment(self) -> None:
        code = "from django.conf import settings; print(settings.SECURE_PROXY_SSL_HEADER)"
        env = {**os.environ, "DJANGO_PROXY_SSL_HEADER": "HTTP_X_FORWARDED_PROTO=https"}
        done = subprocess.run(
            [sys.executable, "-c", f"import django; django.setup(); {code}"],
            cwd=REPO,
            env={**env, "DJANGO_SETTINGS_MODULE": "project.settings"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(done.stdout.strip(), "('HTTP_X_FORWARDED_PROTO', 'https')", done.stderr)
        bad = subprocess.run(
            [sys.executable, "-c", "import django; django.setup()"],
            cwd=REPO,
            env={**env, "DJANGO_SETTINGS_MODULE": "project.settings", "DJANGO_PROXY_SSL_HEADER": "https"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertNotEqual(bad.returncode, 0)
        self.assertIn("DJANGO_PROXY_SSL_HEADER must look like", bad.stderr)
