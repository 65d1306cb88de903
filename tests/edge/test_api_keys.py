"""API keys (issue 14): who may call the HTTP API, how often, and that a key is shown once and
never logged.

A missing, malformed, unknown, wrong or revoked key is a 401 and a key without the operation's
scope a 403, both writing nothing; Idempotency-Keys belong to the key that sent them; the
per-key rate limit answers 429 with Retry-After and lets requests through while Redis is down;
``manage.py api_keys`` and the admin create (shown once), list and revoke keys.

``TestCase`` discards ``on_commit`` callbacks, so the after-commit publish never runs and these
tests need no broker. A real gunicorn's log and the command as a subprocess are in
``test_api_keys_live``.
"""

import hmac
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from io import StringIO
from typing import Any
from unittest import mock

from django.contrib.admin.models import ADDITION, LogEntry
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.db import IntegrityError, transaction
from django.test import Client, RequestFactory, TestCase, override_settings
from django.urls import reverse
from django.utils import timezone

from beans.services import account_create
from edge.http.security import ApiKeyRateLimit
from edge.models import ApiKey, ApiScope
from edge.selectors import api_key_authenticate
from edge.services import api_key_create, api_key_revoke
from harness.ports import free_port
from project.api.routes import api
from reliability.models import OutboxMessage
from tests.api import api_key_new, bearer
from tests.runner import TEST_REDIS_URL
from trades.models import Trade

TRADES_URL = "/api/trades/"
BATCH_URL = "/api/trades/batch/"
# What api_key_create issues: bk_, 12 hex characters (public), _, token_urlsafe(32) (secret).
KEY_PATTERN = re.compile(r"bk_[0-9a-f]{12}_[A-Za-z0-9_-]{43}")
JSON = "application/json; charset=utf-8"
# What the test client returns (an HttpResponse with .json(), .context, ...).
Response = Any


def key_parts(key: str) -> tuple[str, str]:
    """``bk_<prefix>_<secret>`` -> ``(prefix, secret)``."""
    prefix, _, secret = key.removeprefix("bk_").partition("_")
    return prefix, secret


def key_with_another_secret(key: str) -> str:
    """The same public prefix, a secret that was never issued."""
    return f"bk_{key_parts(key)[0]}_{secrets.token_urlsafe(32)}"


def post_json(client: Client, url: str, body: Any, **headers: str) -> Response:
    return client.post(url, data=json.dumps(body), content_type="application/json", headers=headers)


class ApiTestCase(TestCase):
    def setUp(self) -> None:
        self.account = account_create(owner="alice", balance=1_000_000)

    def order(self, beans: int = 30) -> dict[str, int]:
        return {"account": self.account.pk, "beans": beans}

    def assert_refused(self, response: Response, status: int) -> str:
        """A JSON refusal with this status; return its ``error``."""
        self.assertEqual(response.status_code, status, response.content)
        self.assertEqual(response["Content-Type"], JSON)
        error = response.json()["error"]
        self.assertIsInstance(error, str)
        return str(error)

    def assert_nothing_written(self) -> None:
        self.assertEqual(Trade.objects.count(), 0)
        self.assertEqual(OutboxMessage.objects.count(), 0)


class ApiAuthenticationTests(ApiTestCase):
    """Through Django's test client: 401 for anything but a live key, 403 without the scope."""

    def assert_unauthenticated(self, response: Response) -> None:
        error = self.assert_refused(response, 401)
        self.assertIn("API key", error)
        self.assertEqual(response["WWW-Authenticate"], 'Bearer realm="api"')

    def test_a_request_without_a_live_key_is_refused_401_and_writes_nothing(self) -> None:
        key = api_key_new("auth")
        prefix, secret = key_parts(key)
        revoked = api_key_new("auth-revoked")
        api_key_revoke(name_or_prefix=key_parts(revoked)[0])
        cases: dict[str, str | None] = {
            "no Authorization header": None,
            "the scheme alone": "Bearer",
            "the scheme and a space": "Bearer ",
            "the key without a scheme": key,
            "the key under Basic": f"Basic {key}",
            "the key under Token": f"Token {key}",
            "a short key": "Bearer bk_short",
            "the secret alone": f"Bearer {secret}",
            "unicode garbage": "Bearer bk_ünïcødé☃_🔑🔑🔑",
            "unicode with a prefix of 12 characters": "Bearer bk_éééééééééééé_☃",
            "NUL characters in the prefix": f"Bearer bk_{chr(0) * 12}_{secret}",
            "an upper-case prefix": f"Bearer bk_{prefix.upper()}_{secret}",
            "an unknown prefix": f"Bearer bk_{secrets.token_hex(6)}_{secret}",
            "the right prefix, a wrong secret": f"Bearer {key_with_another_secret(key)}",
            "the right prefix, the secret one character short": f"Bearer {key[:-1]}",
            "the key with a trailing word": f"Bearer {key} extra",
            "the key's stored digest": f"Bearer {ApiKey.objects.get(prefix=prefix).digest}",
            "a revoked key": f"Bearer {revoked}",
        }
        for case, authorization in cases.items():
            with self.subTest(case):
                headers = {} if authorization is None else {"Authorization": authorization}
                self.assert_unauthenticated(post_json(self.client, TRADES_URL, self.order(), **headers))
                self.assert_unauthenticated(
                    post_json(self.client, BATCH_URL, {"trades": [self.order()]}, **headers)
                )
                self.assert_nothing_written()

    def test_every_operation_answers_401_without_a_key(self) -> None:
        for method, url, body in self.operations(trade_id=1):
            with self.subTest(f"{method} {url}"):
                if body is None:
                    self.assert_unauthenticated(self.client.get(url))
                else:
                    self.assert_unauthenticated(post_json(self.client, url, body))
        self.assert_nothing_written()

    def test_a_live_key_without_the_scope_is_refused_403_naming_it_and_writes_nothing(self) -> None:
        key = api_key_new("readonly", ApiScope.TRADES_READ, ApiScope.ACCOUNTS_READ)

        for url, body in ((TRADES_URL, self.order()), (BATCH_URL, {"trades": [self.order()]})):
            with self.subTest(url):
                response = post_json(self.client, url, body, **bearer(key))
                self.assertIn("trades:write", self.assert_refused(response, 403))
                self.assertNotIn("WWW-Authenticate", response)  # the key is fine; its rights are not
        self.assert_nothing_written()

    def operations(self, *, trade_id: int) -> list[tuple[str, str, dict[str, Any] | None]]:
        """``(method, url, body)`` of every operation; ``body`` None for a GET."""
        return [
            ("POST", TRADES_URL, self.order()),
            ("POST", BATCH_URL, {"trades": [self.order(), self.order(beans=5)]}),
            ("GET", f"/api/trades/{trade_id}/", None),
            ("GET", f"/api/accounts/{self.account.pk}/trades/", None),
            ("GET", f"/api/accounts/{self.account.pk}/", None),
        ]

    def test_each_operation_accepts_its_scope_and_refuses_a_key_with_every_other(self) -> None:
        trade = Trade.objects.get(
            pk=post_json(self.client, TRADES_URL, self.order(), **bearer(api_key_new())).json()["id"]
        )
        scope_of = {
            ("POST", TRADES_URL): (ApiScope.TRADES_WRITE, 201),
            ("POST", BATCH_URL): (ApiScope.TRADES_WRITE, 201),
            ("GET", f"/api/trades/{trade.pk}/"): (ApiScope.TRADES_READ, 200),
            ("GET", f"/api/accounts/{self.account.pk}/trades/"): (ApiScope.TRADES_READ, 200),
            ("GET", f"/api/accounts/{self.account.pk}/"): (ApiScope.ACCOUNTS_READ, 200),
        }
        operations = self.operations(trade_id=trade.pk)
        self.assertEqual({(method, url) for method, url, _ in operations}, set(scope_of))

        for method, url, body in operations:
            scope, served = scope_of[method, url]
            others = [other for other in ApiScope if other != scope]
            with self.subTest(f"{method} {url} with {scope.value} only"):
                response = self.send(method, url, body, api_key_new("only", scope))
                self.assertEqual(response.status_code, served, response.content)
            with self.subTest(f"{method} {url} with {', '.join(other.value for other in others)}"):
                written_before = (Trade.objects.count(), OutboxMessage.objects.count())
                response = self.send(method, url, body, api_key_new("others", *others))
                self.assertIn(scope.value, self.assert_refused(response, 403))
                self.assertEqual((Trade.objects.count(), OutboxMessage.objects.count()), written_before)

    def send(self, method: str, url: str, body: dict[str, Any] | None, key: str) -> Response:
        if body is None:
            return self.client.get(url, headers=bearer(key))
        return post_json(self.client, url, body, **bearer(key))


class ApiKeyAuthenticateTests(TestCase):
    def test_every_presented_key_costs_exactly_one_digest_comparison(self) -> None:
        # What is asserted is the work, not the time: the refusal path compares two SHA-256
        # digests with hmac.compare_digest exactly as the acceptance path does. Timing itself
        # is not measured: on a shared, noisy machine that would only make a flaky test.
        api_key, key = api_key_create(name="timing", scopes=[ApiScope.TRADES_READ])
        secret = key_parts(key)[1]
        cases = {
            "the right key": (key, api_key),
            "a wrong secret": (key_with_another_secret(key), None),
            "an unknown prefix": (f"bk_{secrets.token_hex(6)}_{secret}", None),
            "a malformed key": ("not-an-api-key", None),
            "a prefix no key could have": (f"bk_{chr(0) * 12}_{secret}", None),
            "an empty key": ("", None),
        }
        for case, (presented, expected) in cases.items():
            with (
                self.subTest(case),
                mock.patch("edge.selectors.hmac.compare_digest", wraps=hmac.compare_digest) as compare,
            ):
                self.assertEqual(api_key_authenticate(presented), expected)
                compare.assert_called_once()
                compared = compare.call_args.args
                self.assertEqual([len(value) for value in compared], [64, 64], "two SHA-256 hex digests")
                self.assertNotIn(presented, compared, "the key itself is never what is compared")

    def test_a_revoked_key_is_still_recognised_so_that_the_caller_can_refuse_it(self) -> None:
        api_key, key = api_key_create(name="revoked", scopes=[ApiScope.TRADES_READ])
        api_key_revoke(name_or_prefix="revoked")
        found = api_key_authenticate(key)
        self.assertEqual(found, api_key)
        assert found is not None
        self.assertIsNotNone(found.revoked_at)


class ApiKeyMemoryTests(ApiTestCase):
    """A process remembers a key that authenticated for API_KEY_CACHE_S, and no longer."""

    def setUp(self) -> None:
        super().setUp()
        self.api_key, self.key = api_key_create(name="remembered", scopes=ApiScope.values)

    def revoked_by_another_process(self) -> None:
        # What this process sees of `api_keys revoke` run elsewhere: the row changes, nothing more.
        ApiKey.objects.filter(pk=self.api_key.pk).update(revoked_at=timezone.now())

    def test_a_key_that_authenticated_is_not_read_again_within_the_cache_time(self) -> None:
        self.assertEqual(api_key_authenticate(self.key), self.api_key)
        with self.assertNumQueries(0):
            self.assertEqual(api_key_authenticate(self.key), self.api_key)
        with self.assertNumQueries(1):
            self.assertIsNone(api_key_authenticate(key_with_another_secret(self.key)), "a wrong secret")

    def test_a_key_revoked_elsewhere_is_refused_once_the_cache_time_passed(self) -> None:
        with override_settings(API_KEY_CACHE_S=0.3):
            self.assertEqual(
                post_json(self.client, TRADES_URL, self.order(), **bearer(self.key)).status_code, 201
            )
            self.revoked_by_another_process()
            self.assertEqual(
                post_json(self.client, TRADES_URL, self.order(), **bearer(self.key)).status_code, 201
            )
            time.sleep(0.35)
            self.assert_refused(post_json(self.client, TRADES_URL, self.order(), **bearer(self.key)), 401)

    def test_with_no_cache_time_a_key_revoked_elsewhere_is_refused_at_once(self) -> None:
        with override_settings(API_KEY_CACHE_S=0):
            self.assertEqual(
                post_json(self.client, TRADES_URL, self.order(), **bearer(self.key)).status_code, 201
            )
            self.revoked_by_another_process()
            self.assert_refused(post_json(self.client, TRADES_URL, self.order(), **bearer(self.key)), 401)

    def test_a_key_revoked_in_this_process_is_refused_at_once(self) -> None:
        self.assertEqual(
            post_json(self.client, TRADES_URL, self.order(), **bearer(self.key)).status_code, 201
        )
        api_key_revoke(name_or_prefix="remembered")
        self.assert_refused(post_json(self.client, TRADES_URL, self.order(), **bearer(self.key)), 401)

    def test_keys_that_do_not_authenticate_are_not_remembered(self) -> None:
        for _ in range(50):
            self.assertIsNone(api_key_authenticate(key_with_another_secret(self.key)))
            self.assertIsNone(api_key_authenticate(f"bk_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"))
        with self.assertNumQueries(1):
            self.assertIsNone(api_key_authenticate(key_with_another_secret(self.key)))


class IdempotencyPerClientTests(ApiTestCase):
    """An Idempotency-Key names a request of one client (API key), not of everybody."""

    def test_one_idempotency_key_from_two_clients_places_two_trades(self) -> None:
        first_key, second_key = api_key_new("client-a"), api_key_new("client-b")
        idempotency = {"Idempotency-Key": "order-1"}

        first = post_json(self.client, TRADES_URL, self.order(), **bearer(first_key), **idempotency)
        second = post_json(self.client, TRADES_URL, self.order(), **bearer(second_key), **idempotency)
        again = post_json(self.client, TRADES_URL, self.order(), **bearer(first_key), **idempotency)

        self.assertEqual([first.status_code, second.status_code, again.status_code], [201, 201, 200])
        self.assertNotEqual(first.json()["id"], second.json()["id"])
        self.assertNotEqual(first.json()["message_id"], second.json()["message_id"])
        self.assertEqual(
            (again.json()["id"], again.json()["message_id"]), (first.json()["id"], first.json()["message_id"])
        )
        self.assertEqual(Trade.objects.count(), 2)
        self.assertEqual(OutboxMessage.objects.count(), 2)
        clients = {
            Trade.objects.get(pk=first.json()["id"]).client_id,
            Trade.objects.get(pk=second.json()["id"]).client_id,
        }
        owners = {ApiKey.objects.get(prefix=key_parts(key)[0]).pk for key in (first_key, second_key)}
        self.assertEqual(clients, owners)

    def test_one_batch_idempotency_key_from_two_clients_places_two_batches(self) -> None:
        first_key, second_key = api_key_new("client-a"), api_key_new("client-b")
        batch = {"trades": [self.order(), self.order(beans=5)]}
        idempotency = {"Idempotency-Key": "batch-1"}

        first = post_json(self.client, BATCH_URL, batch, **bearer(first_key), **idempotency)
        second = post_json(self.client, BATCH_URL, batch, **bearer(second_key), **idempotency)
        again = post_json(self.client, BATCH_URL, batch, **bearer(first_key), **idempotency)

        self.assertEqual([first.status_code, second.status_code, again.status_code], [201, 201, 200])

        def placed(response: Response) -> list[tuple[int, str]]:
            return [(trade["id"], trade["message_id"]) for trade in response.json()["trades"]]

        self.assertEqual(len(placed(first)), 2)
        self.assertFalse(
            {part for trade in placed(first) for part in trade}
            & {part for trade in placed(second) for part in trade},
            "the second client's batch shares no trade or message id with the first's",
        )
        self.assertEqual(placed(again), placed(first))
        self.assertEqual(Trade.objects.count(), 4)
        self.assertEqual(OutboxMessage.objects.count(), 4)


def rate_limit() -> ApiKeyRateLimit:
    """The API's rate limit (one instance, shared by every operation)."""
    [throttle] = api.throttle  # type: ignore[misc]
    assert isinstance(throttle, ApiKeyRateLimit)
    return throttle


# Counters in the tests' own Redis database, not the developer's (db 2).
@override_settings(API_RATE_LIMIT_REDIS_URL=TEST_REDIS_URL)
class ApiRateLimitTests(ApiTestCase):
    LIMIT = 3

    def test_a_key_over_its_limit_gets_429_with_retry_after_and_is_served_once_it_waited(self) -> None:
        key = api_key_new("limited", ApiScope.TRADES_WRITE, rate_limit_per_s=self.LIMIT)
        statuses = []
        for _ in range(30):  # back to back: far more than 3 a second
            response = post_json(self.client, TRADES_URL, self.order(), **bearer(key))
            statuses.append(response.status_code)
            if response.status_code != 201:
                break

        self.assertEqual(statuses[-1], 429, statuses)
        self.assertIn("too many requests", self.assert_refused(response, 429))
        retry_after = response["Retry-After"]
        self.assertRegex(retry_after, r"^[0-9]+$", "Retry-After is an integer number of seconds")
        self.assertGreaterEqual(int(retry_after), 1)
        accepted = statuses.count(201)
        self.assertEqual(accepted, len(statuses) - 1)
        # The LIMIT requests accepted in the second of the 429, and at most LIMIT in the second
        # before it: a window boundary may fall between two requests.
        self.assertGreaterEqual(accepted, self.LIMIT)
        self.assertLessEqual(accepted, 2 * self.LIMIT, statuses)
        self.assertEqual(Trade.objects.count(), accepted, "the refused request wrote nothing")
        self.assertEqual(OutboxMessage.objects.count(), accepted)

        other = post_json(self.client, TRADES_URL, self.order(), **bearer(api_key_new("other")))
        self.assertEqual(other.status_code, 201, "the limit is per key")

        time.sleep(int(retry_after))
        served = post_json(self.client, TRADES_URL, self.order(), **bearer(key))
        self.assertEqual(served.status_code, 201, served.content)

    def test_requests_are_served_while_redis_is_unreachable_and_a_warning_says_so(self) -> None:
        key = api_key_new("fail-open", ApiScope.TRADES_WRITE, rate_limit_per_s=1)
        unreachable = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
        # The warning comes once a minute per process: forget one an earlier test caused.
        with (
            override_settings(API_RATE_LIMIT_REDIS_URL=unreachable),
            mock.patch.object(rate_limit(), "_warned_at", 0.0),
            self.assertLogs("edge.http.security", logging.WARNING) as logs,
        ):
            statuses = [
                post_json(self.client, TRADES_URL, self.order(), **bearer(key)).status_code for _ in range(5)
            ]

        self.assertEqual(statuses, [201] * 5, "a limit of 1 a second is not enforced: fail open")
        self.assertEqual(Trade.objects.count(), 5)
        self.assertEqual(len(logs.records), 1, "once, not once a request")
        self.assertEqual(logs.records[0].levelno, logging.WARNING)
        self.assertIn("rate limit not enforced, Redis unreachable", logs.records[0].getMessage())

    def test_a_failing_redis_client_fails_open_too(self) -> None:
        # Not only RedisError: a client broken in another way (a closed socket file) serves too.
        key = api_key_new("client-broken", ApiScope.TRADES_WRITE, rate_limit_per_s=1)
        broken = mock.Mock(pipeline=mock.Mock(side_effect=ValueError("I/O operation on closed file")))
        with (
            mock.patch.object(
                type(rate_limit()), "client", new_callable=mock.PropertyMock, return_value=broken
            ),
            mock.patch.object(rate_limit(), "_warned_at", 0.0),
            self.assertLogs("edge.http.security", logging.WARNING),
        ):
            statuses = [
                post_json(self.client, TRADES_URL, self.order(), **bearer(key)).status_code for _ in range(3)
            ]
        self.assertEqual(statuses, [201] * 3)

    def test_threads_of_one_process_share_one_redis_client_without_breaking_it(self) -> None:
        limiter = ApiKeyRateLimit()
        request = RequestFactory().post(TRADES_URL)
        request.auth = ApiKey(prefix=secrets.token_hex(6), rate_limit_per_s=10**9)  # type: ignore[attr-defined]
        answers: list[bool] = []
        threads = [
            threading.Thread(target=lambda: answers.append(limiter.allow_request(request))) for _ in range(8)
        ]
        with self.assertNoLogs("edge.http.security", logging.WARNING):
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        self.assertEqual(answers, [True] * 8)
        self.assertEqual(len(limiter._clients), 1, "one client, made once")


class _EveryRecord(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.records: list[logging.LogRecord] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def every_log_record() -> Iterator[_EveryRecord]:
    """Capture every record any logger emits, at every level, and print none of them.

    Each existing logger is set to pass everything up to the root (level NOTSET, propagating,
    enabled, no handlers of its own), so no logger's configuration hides a record; all is
    restored afterwards.
    """
    capture = _EveryRecord()
    root = logging.getLogger()
    loggers = [root] + [
        logger for logger in logging.Logger.manager.loggerDict.values() if isinstance(logger, logging.Logger)
    ]
    saved = [
        (logger, logger.level, logger.propagate, logger.disabled, logger.handlers[:]) for logger in loggers
    ]
    disabled_below = logging.root.manager.disable
    try:
        logging.disable(logging.NOTSET)
        for logger in loggers:
            logger.setLevel(logging.NOTSET)
            logger.propagate, logger.disabled, logger.handlers = True, False, []
        root.setLevel(logging.DEBUG)
        root.handlers = [capture]
        yield capture
    finally:
        for logger, level, propagate, disabled, handlers in saved:
            logger.setLevel(level)
            logger.propagate, logger.disabled, logger.handlers = propagate, disabled, handlers
        logging.disable(disabled_below)


class ApiKeysNeverLoggedTests(ApiTestCase):
    @override_settings(DEBUG=True)
    def test_with_debug_on_no_log_record_holds_a_key_or_its_secret(self) -> None:
        # ninja's HttpBearer logs the whole Authorization header under DEBUG when the scheme is
        # not Bearer; ApiKeyAuth.__call__ reads the header itself to avoid that.
        with every_log_record() as capture:
            _, key = api_key_create(name="logged", scopes=ApiScope.values)
            _, revoked = api_key_create(name="logged-revoked", scopes=ApiScope.values)
            api_key_revoke(name_or_prefix="logged-revoked")
            wrong = key_with_another_secret(key)
            sent = {
                f"Bearer {key}": 201,
                f"Bearer {wrong}": 401,
                f"Bearer {revoked}": 401,
                f"Basic {key}": 401,
                f"Token {key}": 401,
                key: 401,
                f"Bearer {key} {key}": 401,
            }
            for authorization, status in sent.items():
                response = post_json(self.client, TRADES_URL, self.order(), Authorization=authorization)
                self.assertEqual(response.status_code, status, authorization)

        logged = "\n".join(capture.format(record) for record in capture.records)
        for presented in (key, wrong, revoked):
            self.assertNotIn(key_parts(presented)[1], logged)
        # The capture did see the authentication path: with DEBUG on, Django logs each query,
        # and the lookup names the public prefix; the refusals are logged too.
        self.assertIn(key_parts(key)[0], logged)
        self.assertIn("Unauthorized: /api/trades/", logged)


def call(*args: str) -> tuple[str, str]:
    """``manage.py api_keys *args``; return its stdout and stderr."""
    out, err = StringIO(), StringIO()
    call_command("api_keys", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


class ApiKeysCommandTests(ApiTestCase):
    def test_create_prints_a_working_key_as_its_last_line(self) -> None:
        out, err = call("create", "partner", "--scopes", "trades:write", "--rate-limit", "50")

        key = out.splitlines()[-1]
        self.assertRegex(key, KEY_PATTERN)
        self.assertEqual(out.count(key_parts(key)[1]), 1, "the key is printed once")
        self.assertNotIn(key_parts(key)[1], err)
        self.assertIn(key_parts(key)[0], err)  # stderr says which key was created, by its prefix
        api_key = ApiKey.objects.get(name="partner")
        self.assertEqual(
            (api_key.prefix, api_key.scopes, api_key.rate_limit_per_s),
            (key_parts(key)[0], ["trades:write"], 50),
        )
        response = post_json(self.client, TRADES_URL, self.order(), **bearer(key))
        self.assertEqual(response.status_code, 201, response.content)
        self.assertEqual(Trade.objects.get().client_id, api_key.pk)
        self.assertEqual(
            self.client.get(f"/api/trades/{response.json()['id']}/", headers=bearer(key)).status_code, 403
        )

    def test_create_takes_scopes_separated_by_spaces_or_commas(self) -> None:
        call("create", "reader", "--scopes", "trades:read,accounts:read", "trades:write")
        self.assertEqual(
            ApiKey.objects.get(name="reader").scopes, ["accounts:read", "trades:read", "trades:write"]
        )

    def test_list_shows_name_prefix_and_scopes_and_never_a_key_or_digest(self) -> None:
        keys = [
            call("create", "reader", "--scopes", "trades:read", "accounts:read")[0].splitlines()[-1],
            call("create", "old-client", "--scopes", "trades:write")[0].splitlines()[-1],
        ]
        call("revoke", "old-client")

        out, _ = call("list")

        lines = {line.split()[0]: line for line in out.splitlines()[1:]}
        self.assertEqual(set(lines), {"reader", "old-client"})
        for api_key in ApiKey.objects.all():
            self.assertIn(api_key.prefix, lines[api_key.name])
            self.assertIn(",".join(api_key.scopes), lines[api_key.name])
            self.assertNotIn(api_key.digest, out)
        self.assertIn("revoked", lines["old-client"])
        self.assertIn("live", lines["reader"])
        for key in keys:
            self.assertNotIn(key_parts(key)[1], out)
        self.assertNotRegex(out, KEY_PATTERN)

    def test_revoke_by_name_or_by_prefix_refuses_the_key_from_then_on(self) -> None:
        by_name = call("create", "by-name", "--scopes", "trades:read")[0].splitlines()[-1]
        by_prefix = call("create", "by-prefix", "--scopes", "trades:read")[0].splitlines()[-1]
        url = "/api/trades/999999999/"
        for key in (by_name, by_prefix):
            self.assertEqual(self.client.get(url, headers=bearer(key)).status_code, 404)  # authenticated

        out_name, _ = call("revoke", "by-name")
        out_prefix, _ = call("revoke", key_parts(by_prefix)[0])

        self.assertIn("Revoked by-name", out_name)
        self.assertIn("Revoked by-prefix", out_prefix)
        for key in (by_name, by_prefix):
            self.assertIsNotNone(ApiKey.objects.get(prefix=key_parts(key)[0]).revoked_at)
            self.assertEqual(self.client.get(url, headers=bearer(key)).status_code, 401)

    def test_revoking_an_unknown_or_already_revoked_key_is_an_error(self) -> None:
        call("create", "once", "--scopes", "trades:read")
        call("revoke", "once")
        for name in ("nobody", "once", "0123456789ab"):
            with (
                self.subTest(name),
                self.assertRaisesMessage(CommandError, f"no live API key is named {name!r}"),
            ):
                call("revoke", name)

    def test_an_unknown_scope_is_an_error_naming_the_valid_ones(self) -> None:
        with self.assertRaises(CommandError) as raised:
            call("create", "typo", "--scopes", "trades:write", "trades:wrte")
        message = str(raised.exception)
        self.assertIn("trades:wrte", message)
        for scope in ApiScope.values:
            self.assertIn(scope, message)
        self.assertFalse(ApiKey.objects.exists())

    def test_a_second_live_key_with_a_name_is_refused_until_the_first_is_revoked(self) -> None:
        call("create", "partner", "--scopes", "trades:read")
        with self.assertRaisesMessage(CommandError, "a live key is already named 'partner'"):
            call("create", "partner", "--scopes", "trades:write")
        self.assertEqual(ApiKey.objects.filter(name="partner").count(), 1)

        call("revoke", "partner")
        call("create", "partner", "--scopes", "trades:write")
        self.assertEqual(ApiKey.objects.filter(name="partner", revoked_at__isnull=True).count(), 1)


class ApiKeyAdminTests(ApiTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.superuser = User.objects.create_superuser("root", "root@example.com", None)
        self.client.force_login(self.superuser)

    def url(self, view: str, *args: object) -> str:
        return reverse(f"admin:edge_apikey_{view}", args=args)

    def add(self, name: str, *scopes: str, rate_limit_per_s: int = 0) -> Response:
        return self.client.post(
            self.url("add"),
            {"name": name, "scopes": list(scopes), "rate_limit_per_s": rate_limit_per_s},
            follow=True,
        )

    def test_the_add_form_shows_the_new_key_once_and_the_key_works(self) -> None:
        response = self.add("partner", ApiScope.TRADES_WRITE, ApiScope.TRADES_READ, rate_limit_per_s=7)

        self.assertEqual(response.status_code, 200)
        shown = [str(message) for message in response.context["messages"]]
        keys = [key for message in shown for key in KEY_PATTERN.findall(message)]
        self.assertEqual(len(keys), 1, shown)
        [key] = keys
        self.assertEqual(response.content.decode().count(key_parts(key)[1]), 1, "shown once on the page")
        api_key = ApiKey.objects.get(name="partner")
        self.assertEqual(
            (api_key.prefix, sorted(api_key.scopes), api_key.rate_limit_per_s),
            (key_parts(key)[0], ["trades:read", "trades:write"], 7),
        )
        self.assertEqual(post_json(self.client, TRADES_URL, self.order(), **bearer(key)).status_code, 201)
        # Not shown again: not on the list, not on the key's page.
        for page in (self.url("changelist"), self.url("change", api_key.pk)):
            content = self.client.get(page).content.decode()
            self.assertNotIn(key_parts(key)[1], content)

    def test_the_admin_history_names_the_new_key_by_its_prefix(self) -> None:
        response = self.add("partner", ApiScope.TRADES_READ)
        api_key = ApiKey.objects.get(name="partner")

        [entry] = LogEntry.objects.filter(object_id=str(api_key.pk))
        self.assertEqual(entry.action_flag, ADDITION)
        self.assertEqual(entry.object_repr, str(api_key))
        self.assertIn(f"bk_{api_key.prefix}_…", entry.object_repr)
        added = [
            str(message) for message in response.context["messages"] if "added successfully" in str(message)
        ]
        self.assertEqual(len(added), 1)
        self.assertIn(f"bk_{api_key.prefix}_…", added[0])

    def test_the_change_page_shows_neither_the_key_nor_its_digest_and_edits_nothing(self) -> None:
        response = self.add("partner", ApiScope.TRADES_READ)
        [key] = KEY_PATTERN.findall(" ".join(str(message) for message in response.context["messages"]))
        api_key = ApiKey.objects.get(name="partner")

        page = self.client.get(self.url("change", api_key.pk))

        self.assertEqual(page.status_code, 200)
        content = page.content.decode()
        self.assertIn(api_key.prefix, content)
        self.assertNotIn(key_parts(key)[1], content)
        self.assertNotIn(api_key.digest, content)
        self.client.post(
            self.url("change", api_key.pk),
            {"name": "renamed", "scopes": ["trades:write"], "rate_limit_per_s": 1},
        )
        api_key.refresh_from_db()
        self.assertEqual(
            (api_key.name, api_key.scopes, api_key.rate_limit_per_s), ("partner", ["trades:read"], 0)
        )

    def test_the_revoke_action_revokes_the_key(self) -> None:
        response = self.add("partner", ApiScope.TRADES_READ)
        [key] = KEY_PATTERN.findall(" ".join(str(message) for message in response.context["messages"]))
        url = "/api/trades/999999999/"
        self.assertEqual(self.client.get(url, headers=bearer(key)).status_code, 404)  # authenticated
        api_key = ApiKey.objects.get(name="partner")

        response = self.client.post(
            self.url("changelist"), {"action": "revoke", "_selected_action": [api_key.pk]}, follow=True
        )

        self.assertIn("Revoked 1 key(s).", [str(message) for message in response.context["messages"]])
        api_key.refresh_from_db()
        self.assertIsNotNone(api_key.revoked_at)
        self.assertEqual(self.client.get(url, headers=bearer(key)).status_code, 401)

    def test_a_key_cannot_be_deleted_only_revoked(self) -> None:
        self.add("partner", ApiScope.TRADES_READ)
        api_key = ApiKey.objects.get(name="partner")

        with self.assertLogs("django.request", logging.WARNING):  # "Forbidden (Permission denied)"
            self.assertEqual(self.client.get(self.url("delete", api_key.pk)).status_code, 403)
            self.assertEqual(
                self.client.post(self.url("delete", api_key.pk), {"post": "yes"}).status_code, 403
            )
        changelist = self.client.get(self.url("changelist"))
        actions = [name for name, _ in changelist.context["action_form"].fields["action"].choices]
        self.assertIn("revoke", actions)
        self.assertNotIn("delete_selected", actions)
        self.assertTrue(ApiKey.objects.filter(pk=api_key.pk).exists())

    def test_adding_a_second_live_key_with_a_name_is_refused_by_the_form(self) -> None:
        self.add("partner", ApiScope.TRADES_READ)
        response = self.add("partner", ApiScope.TRADES_WRITE)

        self.assertContains(response, "A live key has this name")
        self.assertEqual(ApiKey.objects.filter(name="partner").count(), 1)
        self.assertNotRegex(response.content.decode(), KEY_PATTERN)


class ApiKeyConstraintTests(TestCase):
    """The database itself refuses a key the services would never make."""

    def _key(self, **fields: Any) -> ApiKey:
        values: dict[str, Any] = {
            "name": "k",
            "prefix": secrets.token_hex(6),
            "digest": "0" * 64,
            "scopes": [ApiScope.TRADES_READ],
        }
        values.update(fields)
        return ApiKey.objects.create(**values)

    def test_two_keys_with_one_prefix_are_refused(self) -> None:
        self._key(name="a", prefix="aaaaaaaaaaaa")
        with self.assertRaisesMessage(IntegrityError, "api_key_prefix_unique"), transaction.atomic():
            self._key(name="b", prefix="aaaaaaaaaaaa")

    def test_two_live_keys_with_one_name_are_refused_but_a_revoked_one_is_not_in_the_way(self) -> None:
        self._key(name="shop", revoked_at=timezone.now())
        self._key(name="shop")
        with self.assertRaisesMessage(IntegrityError, "api_key_live_name_unique"), transaction.atomic():
            self._key(name="shop")

    def test_unknown_or_no_scopes_are_refused(self) -> None:
        for scopes in (["trades:delete"], [], [ApiScope.TRADES_READ, "admin"]):
            with (
                self.subTest(scopes=scopes),
                self.assertRaisesMessage(IntegrityError, "api_key_scopes_known"),
                transaction.atomic(),
            ):
                self._key(scopes=scopes)
