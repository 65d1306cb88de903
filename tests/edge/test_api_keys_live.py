"""API keys outside the test client: a real gunicorn's log, and ``manage.py api_keys`` as a process.

Whatever a client sends in ``Authorization`` (a live key, a wrong or revoked one, the key under
another scheme), no full key and no secret reaches a log; the public prefix may.
"""

import base64
import json
import secrets
import subprocess
import sys
import urllib.error
import urllib.request

from django.test import TransactionTestCase, tag

from beans.services import account_create
from edge.models import ApiKey, ApiScope
from edge.services import api_key_create, api_key_revoke
from harness.environment import subprocess_env
from harness.processes import REPO
from harness.web import Gunicorn
from tests.api import bearer
from tests.edge.test_api_keys import KEY_PATTERN, key_parts, key_with_another_secret


def request(url: str, *, authorization: str, body: dict[str, int] | None = None) -> int:
    """Send one request to the server under test; return its status."""
    headers = {"Authorization": authorization}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    sent = urllib.request.Request(url, data=data, headers=headers, method="POST" if body else "GET")  # noqa: S310
    try:
        with urllib.request.urlopen(sent, timeout=30) as response:  # noqa: S310 - a local test server
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def basic(user: str, password: str = "") -> str:
    """``Authorization`` as ``curl -u user:password`` sends it."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@tag("integration")
class ApiKeysNeverInTheWebLogTests(TransactionTestCase):
    def test_no_key_or_secret_reaches_the_gunicorn_log_whatever_the_client_sends(self) -> None:
        account = account_create(owner="alice", balance=1_000)
        _, key = api_key_create(name="live", scopes=ApiScope.values)
        _, revoked = api_key_create(name="live-revoked", scopes=ApiScope.values)
        api_key_revoke(name_or_prefix="live-revoked")
        wrong = key_with_another_secret(key)
        # The project's settings log at LOG_LEVEL, gunicorn at its --log-level; DEBUG is off, as
        # the Gunicorn helper has it; the access log is on (project/gunicorn.conf.py).
        server = Gunicorn(subprocess_env({"LOG_LEVEL": "DEBUG", "GUNICORN_CMD_ARGS": "--log-level debug"}))
        self.addCleanup(server.stop)
        server.wait_answering()
        trades, order = server.url("/api/trades/"), {"account": account.pk, "beans": 1}
        sent = [
            (trades, f"Bearer {key}", order, 201),
            (server.url(f"/api/accounts/{account.pk}/"), f"Bearer {key}", None, 200),
            (trades, f"Bearer {wrong}", order, 401),
            (trades, f"Bearer {revoked}", order, 401),
            (trades, f"Basic {key}", order, 401),
            (trades, f"Token {key}", order, 401),
            (trades, key, order, 401),
            # What "curl -u KEY:" sends, and a client that base64-encodes the bare key.
            (trades, basic(key), order, 401),
            (trades, "Basic " + base64.b64encode(key.encode()).decode(), order, 401),
            (trades, basic("client", key), order, 401),
        ]
        for url, authorization, body, status in sent:
            with self.subTest(authorization.split(" ")[0] if " " in authorization else "no scheme"):
                self.assertEqual(request(url, authorization=authorization, body=body), status)
        server.stop()  # every line written and flushed

        log = server.log_path.read_text(errors="replace")
        self.assertIn('"POST /api/trades/ HTTP/1.1" 201', log, "the access log is on and was read")
        self.assertIn('"POST /api/trades/ HTTP/1.1" 401', log)
        lines = log.splitlines()
        for presented in (key, wrong, revoked):
            prefix, secret = key_parts(presented)
            with self.subTest(f"the secret of bk_{prefix}_…"):
                leaked = [line.replace(secret, "<SECRET>") for line in lines if secret in line]
                self.assertEqual(leaked, [], "these log lines hold the key's secret")
        self.assertEqual(
            [KEY_PATTERN.sub("bk_<KEY>", line) for line in lines if KEY_PATTERN.search(line)],
            [],
            "these log lines hold a whole key",
        )


class ApiKeysCommandProcessTests(TransactionTestCase):
    def test_create_prints_the_key_only_as_its_last_stdout_line_and_never_on_stderr(self) -> None:
        done = subprocess.run(
            [sys.executable, "manage.py", "api_keys", "create", "cli", "--scopes", "trades:read"],
            cwd=REPO,
            # The chattiest the command can be: DEBUG on, every logger at DEBUG.
            env=subprocess_env({"DJANGO_DEBUG": "true", "LOG_LEVEL": "DEBUG"}),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

        self.assertEqual(done.returncode, 0, done.stderr)
        key = done.stdout.splitlines()[-1]
        self.assertRegex(key, KEY_PATTERN)
        prefix, secret = key_parts(key)
        self.assertEqual(done.stdout.count(secret), 1, "printed once, on the last line")
        self.assertNotIn(secret, done.stderr)
        self.assertIn(prefix, done.stderr, "stderr names the key by its prefix")
        self.assertEqual(ApiKey.objects.get(name="cli").prefix, prefix)
        # The key works: authenticated (404, not 401) for a trade that does not exist.
        self.assertEqual(self.client.get("/api/trades/999999999/", headers=bearer(key)).status_code, 404)
        self.assertEqual(
            self.client.get(
                "/api/trades/999999999/", headers=bearer(f"bk_{prefix}_{secrets.token_urlsafe(32)}")
            ).status_code,
            401,
        )
