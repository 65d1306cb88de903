"""The demo places every trade however fast the machine: its client honours 429/503 and Retry-After.

Two layers. The client (``scripts/place-trades-http.py``) against a small HTTP server of the
test's own that limits, refuses and drops, so each rule of the contract is seen on its own and
at once. Then ``scripts/demo`` end to end (gunicorn, a worker, beat, RabbitMQ, PostgreSQL,
Redis) with the API's rate limit far below the client's sending rate: every trade is still
placed, deducted once and verified, and the demo says how many requests were limited.
"""

import contextlib
import importlib.util
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from unittest import mock

import psycopg
from django.test import SimpleTestCase, tag

from harness.broker_admin import BrokerAdminError, broker_admin
from harness.processes import REPO
from project.environment import database_drop, database_url, libpq_url

DEMO = REPO / "scripts" / "demo"


def _client_module() -> Any:
    spec = importlib.util.spec_from_file_location(
        "place_trades_http", REPO / "scripts" / "place-trades-http.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


client = _client_module()


class ScriptedApi(ThreadingHTTPServer):
    """Answers ``POST /api/trades/`` from a script per Idempotency-Key, and records every request."""

    daemon_threads = True

    def __init__(self, script: dict[str, list[Any]]) -> None:
        self.script = script  # key -> answers in order: (status, headers) or "drop"
        self.requests: list[tuple[str, dict[str, Any], str]] = []  # (key, body, authorization)
        self.placed: Counter[str] = Counter()
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), ScriptedHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/api"


class ScriptedHandler(BaseHTTPRequestHandler):
    server: ScriptedApi

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        key = self.headers["Idempotency-Key"]
        with self.server.lock:
            self.server.requests.append((key, body, self.headers["Authorization"]))
            answers = self.server.script.get(key, [])
            answer = answers.pop(0) if answers else (201, {})
            if answer != "drop" and answer[0] in (200, 201):
                self.server.placed[key] += 1
        if answer == "drop":
            # A connection closed without an answer: the client cannot know whether it applied.
            self.close_connection = True
            self.connection.close()
            return
        status, headers = answer
        payload = json.dumps({"id": 1} if status in (200, 201) else {"error": "scripted"}).encode()
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class DemoClientTests(SimpleTestCase):
    """Each rule of the API's contract, seen by the demo's client on its own."""

    def serve(self, script: dict[str, list[Any]]) -> ScriptedApi:
        server = ScriptedApi(script)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        self.addCleanup(thread.join, 5)
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)
        return server

    def run_client(self, server: ScriptedApi, *extra: str, trades: int = 3) -> tuple[int, str]:
        argv = [
            "--api", server.url, "--first-account", "7", "--accounts", "2", "--trades", str(trades),
            "--beans", "100", "--key-prefix", "k", "--parallel", "2", *extra,
        ]  # fmt: skip
        stdout, stderr = io.StringIO(), io.StringIO()
        with (
            mock.patch.dict(os.environ, API_KEY="bk_test_secret"),
            mock.patch.object(logging.getLogger("httpx"), "disabled", True),  # a line per request
            contextlib.redirect_stdout(stdout),
            contextlib.redirect_stderr(stderr),
        ):
            rc = client.main(argv)
        return rc, stdout.getvalue() + stderr.getvalue()

    def test_a_429_and_a_503_are_repeated_with_the_same_key_after_retry_after(self) -> None:
        server = self.serve(
            {
                "k-1": [(429, {"Retry-After": "0"}), (429, {"Retry-After": "0"})],
                "k-2": [(503, {"Retry-After": "0"})],
            }
        )
        rc, out = self.run_client(server)
        self.assertEqual(rc, 0, out)
        keys = [key for key, _, _ in server.requests]
        self.assertEqual(Counter(keys), Counter({"k-1": 3, "k-2": 2, "k-3": 1}))
        self.assertEqual(server.placed, Counter({"k-1": 1, "k-2": 1, "k-3": 1}), "each trade placed once")
        bodies = {key: body for key, body, _ in server.requests}
        self.assertEqual(bodies["k-1"], {"account": 7, "beans": 100})
        self.assertEqual(bodies["k-2"], {"account": 8, "beans": 100}, "round-robin over the accounts")
        self.assertEqual({auth for _, _, auth in server.requests}, {"Bearer bk_test_secret"})
        self.assertIn("limited (429): 2, retried: 3 (429: 2, 503: 1)", out)

    def test_a_dropped_connection_is_repeated_with_the_same_key(self) -> None:
        server = self.serve({"k-1": ["drop"]})
        rc, out = self.run_client(server, trades=1)
        self.assertEqual(rc, 0, out)
        self.assertEqual([key for key, _, _ in server.requests], ["k-1", "k-1"])
        self.assertIn("retried: 1 (transport: 1)", out)

    def test_a_refusal_is_final_and_fails_the_run(self) -> None:
        server = self.serve({"k-2": [(409, {})]})
        rc, out = self.run_client(server)
        self.assertEqual(rc, 1, out)
        self.assertEqual(Counter(key for key, _, _ in server.requests)["k-2"], 1, "a 409 is not repeated")
        self.assertIn("2 x 201, 1 x 409", out)

    def test_the_deadline_ends_the_repeats(self) -> None:
        server = self.serve({"k-1": [(429, {"Retry-After": "30"})]})
        rc, out = self.run_client(server, "--deadline-s", "2", trades=1)
        self.assertEqual(rc, 1, out)
        self.assertEqual(len(server.requests), 1, "a wait past the deadline is not started")
        self.assertIn("1 x deadline", out)

    def test_retry_after_is_read_as_seconds_or_an_http_date(self) -> None:
        self.assertEqual(client.retry_after_s("3"), 3.0)
        self.assertEqual(client.retry_after_s(None), client.DEFAULT_RETRY_AFTER_S)
        self.assertEqual(client.retry_after_s("soon"), client.DEFAULT_RETRY_AFTER_S)
        self.assertAlmostEqual(client.retry_after_s("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0), 10.0)


@tag("integration", "demo", "broker")
class DemoUnderItsOwnRateLimitTests(SimpleTestCase):
    """``scripts/demo`` with the API limited to 20 requests a second, its client sending faster."""

    def test_the_demo_places_and_deducts_every_trade_when_its_key_is_rate_limited(self) -> None:
        run_dir = Path(tempfile.mkdtemp(prefix="demo-limited-"))
        self.addCleanup(shutil.rmtree, run_dir, ignore_errors=True)
        database = f"beans_demo_limited_{os.getpid()}"
        vhost = f"demo-limited-{os.getpid()}"
        self.addCleanup(database_drop, database_url(database))
        self.addCleanup(_vhost_delete, vhost)
        env = {
            key: value
            for key, value in os.environ.items()
            # The suite's own settings would point the demo at the test database and vhost.
            if not key.startswith(("DATABASE_", "BEANS_", "DJANGO_", "CELERY_", "RELIABILITY_", "TRADES_"))
        }
        env.update(
            API_RATE_LIMIT_PER_S="20",
            DEMO_TRADES="200",
            DEMO_PARALLEL="8",
            DEMO_DATABASE=database,
            DEMO_VHOST=vhost,
            DEMO_RUN_DIR=str(run_dir),
            VENV=str(Path(sys.executable).parent.parent),
        )
        demo = subprocess.run([str(DEMO)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        output = demo.stdout[-4000:] + demo.stderr[-4000:]
        self.assertEqual(demo.returncode, 0, output)
        self.assertIn("verify: OK", demo.stdout)
        self.assertIn("answers: 199 x 201;", demo.stdout)
        limited = re.search(r"limited \(429\): (\d+)", demo.stdout)
        assert limited is not None, output
        self.assertGreater(
            int(limited.group(1)), 0, "the client must have outrun the limit for this to test it"
        )
        deducted = _scalar(database, "select count(*) from trades_trade where status = 'deducted'")
        self.assertEqual(deducted, 200, "every trade placed and deducted")
        self.assertEqual(_scalar(database, "select count(distinct idempotency_key) from trades_trade"), 200)
        self.assertNotIn(vhost, broker_admin().vhosts(), "the demo deletes its vhost when it ends")


def _vhost_delete(vhost: str) -> None:
    with contextlib.suppress(BrokerAdminError):
        broker_admin().vhost_delete(vhost)


def _scalar(database: str, sql: str) -> int:
    with psycopg.connect(libpq_url(database_url(database))) as connection:
        row = connection.execute(sql).fetchone()
    assert row is not None
    return int(row[0])
