"""The trade service's HTTP API: status codes, JSON shapes, and that a refused request writes nothing.

``TestCase`` discards ``on_commit`` callbacks, so the after-commit publish never
runs and these tests need no broker.
"""

import json
from typing import Any
from unittest import mock

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection
from django.test import TestCase

from beans.services import account_create
from edge.http.parsing import database_outcome_unknown
from reliability.models import OutboxMessage
from tests.api import client_authenticate
from trades.models import Trade

TRADES_URL = "/api/trades/"
BATCH_URL = "/api/trades/batch/"


class TradeApiTests(TestCase):
    def setUp(self) -> None:
        client_authenticate(self.client)
        self.account = account_create(owner="alice", balance=100)

    def _post(self, body: Any, *, content_type: str = "application/json", **headers: str) -> Any:
        data = body if isinstance(body, bytes | str) else json.dumps(body)
        return self.client.post(TRADES_URL, data=data, content_type=content_type, headers=headers)

    def _assert_refused(self, response: Any, status: int) -> None:
        self.assertEqual(response.status_code, status, response.content)
        self.assertEqual(response["Content-Type"], "application/json; charset=utf-8")
        self.assertIsInstance(response.json()["error"], str)
        self.assertEqual(Trade.objects.count(), 0)
        self.assertEqual(OutboxMessage.objects.count(), 0)

    def test_valid_trade_is_created_pending(self) -> None:
        response = self._post({"account": self.account.pk, "beans": 30})

        self.assertEqual(response.status_code, 201)
        body = response.json()
        trade = Trade.objects.get()
        self.assertEqual(body["id"], trade.pk)
        self.assertEqual((body["account"], body["beans"], body["status"]), (self.account.pk, 30, "pending"))
        self.assertEqual(body["message_id"], str(trade.deduction_message_id))
        self.assertEqual(str(OutboxMessage.objects.get().message_id), body["message_id"])

    def test_a_database_that_cannot_be_reached_is_a_503_nothing_written(self) -> None:
        # Narrow unit tests: the failover tests (tests/e2e/test_pgcluster_integration.py) cut real
        # connections. Here the placement fails as psycopg reports a server it cannot reach.
        for error in (OperationalError, InterfaceError):
            with (
                self.subTest(error.__name__),
                mock.patch("trades.services.trade_place", side_effect=error("connection failed")),
                mock.patch("edge.http.parsing.database_outcome_unknown", return_value=False),
            ):
                response = self._post({"account": self.account.pk, "beans": 30}, **{"Idempotency-Key": "k"})
                self._assert_refused(response, 503)
                self.assertEqual(response["Retry-After"], "1")
                self.assertIn("nothing was written", response.json()["error"])

    def test_a_connection_lost_mid_request_is_a_500_that_says_to_repeat_it_with_its_key(self) -> None:
        with (
            mock.patch(
                "trades.services.trade_place", side_effect=OperationalError("server closed the connection")
            ),
            mock.patch("edge.http.parsing.database_outcome_unknown", return_value=True),
        ):
            response = self._post({"account": self.account.pk, "beans": 30}, **{"Idempotency-Key": "k"})
        self._assert_refused(response, 500)
        self.assertIn("same Idempotency-Key", response.json()["error"])

    def test_the_outcome_is_unknown_only_on_a_connection_that_was_open_and_failed(self) -> None:
        self.assertFalse(database_outcome_unknown(), "open and healthy")
        connection.errors_occurred = True
        self.addCleanup(setattr, connection, "errors_occurred", False)
        self.assertTrue(database_outcome_unknown(), "open, then failed")

    def test_json_content_type_with_charset_is_accepted(self) -> None:
        response = self._post(
            {"account": self.account.pk, "beans": 30}, content_type="application/json; charset=utf-8"
        )
        self.assertEqual(response.status_code, 201)

    def test_repeated_idempotency_key_returns_the_same_trade(self) -> None:
        first = self._post({"account": self.account.pk, "beans": 30}, **{"Idempotency-Key": "order-1"})
        again = self._post({"account": self.account.pk, "beans": 30}, **{"Idempotency-Key": "order-1"})

        self.assertEqual((first.status_code, again.status_code), (201, 200))
        self.assertEqual(again.json()["id"], first.json()["id"])
        self.assertEqual(again.json()["message_id"], first.json()["message_id"])
        self.assertEqual(Trade.objects.count(), 1)
        self.assertEqual(OutboxMessage.objects.count(), 1)

    def test_idempotency_key_reused_for_other_beans_is_a_conflict(self) -> None:
        self._post({"account": self.account.pk, "beans": 30}, **{"Idempotency-Key": "order-1"})

        response = self._post({"account": self.account.pk, "beans": 31}, **{"Idempotency-Key": "order-1"})

        self.assertEqual(response.status_code, 409)
        self.assertIsInstance(response.json()["error"], str)
        self.assertEqual(Trade.objects.count(), 1)

    def test_malformed_requests_are_refused_and_write_nothing(self) -> None:
        account = self.account.pk
        cases: dict[str, tuple[Any, str]] = {
            "invalid JSON": (b'{"account": 1, "beans":', "application/json"),
            "empty body": (b"", "application/json"),
            "array body": ([account, 30], "application/json"),
            "number body": (b"30", "application/json"),
            "missing beans": ({"account": account}, "application/json"),
            "missing account": ({"beans": 30}, "application/json"),
            "unknown field": ({"account": account, "beans": 30, "note": "x"}, "application/json"),
            "beans 0": ({"account": account, "beans": 0}, "application/json"),
            "beans negative": ({"account": account, "beans": -5}, "application/json"),
            "beans as text": ({"account": account, "beans": "100"}, "application/json"),
            "beans true": ({"account": account, "beans": True}, "application/json"),
            "beans null": ({"account": account, "beans": None}, "application/json"),
            "beans fraction": (f'{{"account": {account}, "beans": 10.5}}', "application/json"),
            # 2**53 + 1 reads as the double 2**53: not necessarily the account the client meant.
            "account float beyond exact": ('{"account": 9007199254740993.0, "beans": 1}', "application/json"),
            "beans NaN": (f'{{"account": {account}, "beans": NaN}}', "application/json"),
            "beans huge": ({"account": account, "beans": 10**30}, "application/json"),
            "beans above maximum": (
                {"account": account, "beans": settings.TRADES_MAX_BEANS + 1},
                "application/json",
            ),
            "account as text": ({"account": str(account), "beans": 30}, "application/json"),
            "account beyond bigint": ({"account": 2**63, "beans": 30}, "application/json"),
            "wrong content type": ({"account": account, "beans": 30}, "text/plain"),
            "form content type": (f"account={account}&beans=30", "application/x-www-form-urlencoded"),
            "body over 4096 bytes": (
                json.dumps({"account": account, "beans": 30}) + " " * 4096,
                "application/json",
            ),
            "invalid UTF-8": (b'{"account": 1, "beans": 30, "\xff\xfe": 1}', "application/json"),
        }
        for label, (body, content_type) in cases.items():
            with self.subTest(label):
                self._assert_refused(self._post(body, content_type=content_type), 400)

    def test_an_integral_number_written_with_a_fraction_or_exponent_is_that_integer(self) -> None:
        # JSON has one kind of number, and JSON Schema's "integer" includes 30.0: so does the API.
        response = self._post(f'{{"account": {self.account.pk}.0, "beans": 3e1}}')

        self.assertEqual(response.status_code, 201, response.content)
        self.assertEqual((response.json()["account"], response.json()["beans"]), (self.account.pk, 30))

    def test_deeply_nested_json_is_refused(self) -> None:
        # 4000 bytes, under the size limit, but deeper than the json module's recursion limit.
        self._assert_refused(self._post("[" * 2000 + "]" * 2000), 400)

    def test_empty_idempotency_key_is_refused(self) -> None:
        response = self._post({"account": self.account.pk, "beans": 30}, **{"Idempotency-Key": ""})
        self._assert_refused(response, 400)

    def test_unknown_account_is_not_found(self) -> None:
        response = self._post({"account": self.account.pk + 1000, "beans": 30})
        self._assert_refused(response, 404)

    def test_get_on_the_collection_is_not_allowed(self) -> None:
        response = self.client.get(TRADES_URL)
        self.assertEqual(response.status_code, 405)
        self.assertEqual(response["Allow"], "POST")

    def test_trade_detail_shows_the_trade(self) -> None:
        created = self._post({"account": self.account.pk, "beans": 30}).json()

        response = self.client.get(f"{TRADES_URL}{created['id']}/")

        self.assertEqual(response.status_code, 200)
        body = response.json()
        self.assertEqual(body["id"], created["id"])
        self.assertEqual((body["status"], body["beans"], body["settled_at"]), ("pending", 30, None))
        self.assertEqual(body["message_id"], created["message_id"])

    def test_unknown_trade_is_not_found(self) -> None:
        response = self.client.get(f"{TRADES_URL}999999/")
        self.assertEqual(response.status_code, 404)
        self.assertIsInstance(response.json()["error"], str)

    def test_post_on_a_trade_is_not_allowed(self) -> None:
        created = self._post({"account": self.account.pk, "beans": 30}).json()
        response = self.client.post(f"{TRADES_URL}{created['id']}/")
        self.assertEqual(response.status_code, 405)


class TradeBatchApiTests(TestCase):
    """POST /api/trades/batch/: many trades in one transaction, all of them or none."""

    def setUp(self) -> None:
        client_authenticate(self.client)
        self.alice = account_create(owner="alice", balance=100).pk
        self.bob = account_create(owner="bob", balance=100).pk

    def _post(self, body: Any, **headers: str) -> Any:
        data = body if isinstance(body, bytes | str) else json.dumps(body)
        return self.client.post(BATCH_URL, data=data, content_type="application/json", headers=headers)

    def test_a_batch_is_created_with_one_message_per_trade(self) -> None:
        response = self._post(
            {"trades": [{"account": self.alice, "beans": 10}, {"account": self.bob, "beans": 20}]}
        )

        self.assertEqual(response.status_code, 201, response.content)
        body = response.json()
        self.assertEqual(
            [(t["account"], t["beans"], t["status"]) for t in body["trades"]],
            [(self.alice, 10, "pending"), (self.bob, 20, "pending")],
        )
        self.assertEqual(
            sorted(t["message_id"] for t in body["trades"]),
            sorted(str(m) for m in OutboxMessage.objects.values_list("message_id", flat=True)),
        )
        self.assertIn("pipeline", body)

    def test_a_repeated_key_returns_the_same_batch_and_a_reused_one_conflicts(self) -> None:
        batch = {"trades": [{"account": self.alice, "beans": 10}, {"account": self.bob, "beans": 20}]}
        first = self._post(batch, **{"Idempotency-Key": "batch-1"})
        again = self._post(batch, **{"Idempotency-Key": "batch-1"})
        other = self._post(
            {"trades": [{"account": self.alice, "beans": 11}]}, **{"Idempotency-Key": "batch-1"}
        )

        self.assertEqual((first.status_code, again.status_code, other.status_code), (201, 200, 409))
        self.assertEqual(again.json()["trades"], first.json()["trades"])
        self.assertEqual(Trade.objects.count(), 2)

    def test_a_batch_with_one_bad_order_is_refused_whole_and_says_which(self) -> None:
        cases: dict[str, tuple[Any, int, str]] = {
            "not an object": ([{"account": self.alice, "beans": 1}], 400, "request body: Input should be"),
            "no trades field": ({"orders": []}, 400, "trades: Field required"),
            "trades not a list": (
                {"trades": {"account": self.alice, "beans": 1}},
                400,
                "trades: Input should be",
            ),
            "no trades": ({"trades": []}, 400, "trades: List should have at least 1"),
            "one zero": (
                {"trades": [{"account": self.alice, "beans": 1}, {"account": self.bob, "beans": 0}]},
                400,
                "trades[1].beans",
            ),
            "one unknown account": (
                {"trades": [{"account": self.alice, "beans": 1}, {"account": self.bob + 9, "beans": 1}]},
                404,
                str(self.bob + 9),
            ),
            "too many": (
                {"trades": [{"account": self.alice, "beans": 1}] * (settings.TRADES_BATCH_MAX + 1)},
                400,
                f"trades: List should have at most {settings.TRADES_BATCH_MAX}",
            ),
            "body too large": ("[" + " " * 70_000 + "]", 400, "larger than"),
        }
        for label, (body, status, says) in cases.items():
            with self.subTest(label):
                response = self._post(body)
                self.assertEqual(response.status_code, status, response.content)
                self.assertIn(says, response.json()["error"])
        self.assertEqual((Trade.objects.count(), OutboxMessage.objects.count()), (0, 0))
