"""Bad input, property-based: whatever reaches the trade API, a clear answer and no stray write.

Hypothesis throws random and malformed requests at ``POST /api/trades/``, at
``POST /api/trades/batch/`` (whole batches, valid orders mixed with bad ones) and the GET
endpoints: wrong types, huge numbers, zero and negative beans, unknown accounts, bodies that
are not JSON, not UTF-8 or too large, other content types, odd ``Idempotency-Key`` headers,
other HTTP methods. Every answer must be a 2xx or a 4xx with a JSON ``error`` (never a
500), and a refused request must write nothing: no trade, no outbox row, no stream position.

``hypothesis.extra.django.TestCase`` runs each example in a transaction of its own and
discards ``on_commit`` callbacks, so nothing is published and examples do not see each other.
The tally (cases tried, 500s, effects) is written to stderr when the class finishes.
"""

import json
import re
import sys
from collections import Counter
from typing import Any

from django.conf import settings
from django.db.models import Sum
from django.test import Client
from hypothesis import example, given, note
from hypothesis import strategies as st
from hypothesis.extra.django import TestCase

from beans.models import Account, LedgerEntry
from beans.services import account_create
from reliability.models import OutboxMessage, StreamCounter
from tests.api import api_key_new, client_authenticate
from tests.strategies import examples
from tests.strategies import json_values as json_values_of
from trades.api import BATCH_IDEMPOTENCY_KEY_MAX_LENGTH, EXACT_FLOAT_MAX, MAX_BATCH_BODY_BYTES, MAX_BODY_BYTES
from trades.models import Trade
from trades.services import IDEMPOTENCY_KEY_MAX_LENGTH

TRADES_URL = "/api/trades/"
BATCH_URL = "/api/trades/batch/"
BIGINT_MAX = 2**63 - 1
EXAMPLES = examples(200)
json_values = json_values_of(finite=False)
bean_counts = (
    st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from([0, -1, 1, settings.TRADES_MAX_BEANS, settings.TRADES_MAX_BEANS + 1, 2**63, 2**64])
    | json_values
)
other_content_types = st.sampled_from(
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=xyz",
        "application/xml",
        "application/octet-stream",
        "",
    ]
) | st.text(max_size=30).filter(lambda ct: "json" not in ct.lower())
header_values = (
    st.none()
    | st.text(max_size=IDEMPOTENCY_KEY_MAX_LENGTH + 20)
    | st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=IDEMPOTENCY_KEY_MAX_LENGTH + 5)
)


class Tally:
    """What the properties saw, across every example (shrinking included)."""

    def __init__(self) -> None:
        self.statuses: Counter[int] = Counter()
        self.server_errors = 0
        self.effects = 0

    @property
    def cases(self) -> int:
        return sum(self.statuses.values())

    def line(self) -> str:
        refused = sum(n for status, n in self.statuses.items() if 400 <= status < 500)
        accepted = sum(n for status, n in self.statuses.items() if status < 300)
        return (
            f"bad input, trade API: {self.cases} cases tried, 500s = {self.server_errors}, "
            f"effects = {self.effects} (refused with a 4xx: {refused}, accepted: {accepted}; "
            f"by status: {dict(sorted(self.statuses.items()))})"
        )


def _writes() -> tuple[int, int, int, int]:
    """Everything a trade request could write: trades, outbox rows, stream positions, ledger."""
    last_seqs = StreamCounter.objects.aggregate(total=Sum("last_seq"))["total"] or 0
    return (Trade.objects.count(), OutboxMessage.objects.count(), last_seqs, LedgerEntry.objects.count())


def _usable_key(key: str, max_length: int) -> bool:
    """An Idempotency-Key is 1 to ``max_length`` printable ASCII characters (a Structured Field String)."""
    return 0 < len(key) <= max_length and all(" " <= char <= "~" for char in key)


def _int_parses(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _is_positive_int(value: Any, maximum: int) -> bool:
    """An integer (an integral JSON number within a double's exact range counts), in 1..maximum."""
    if isinstance(value, float) and value.is_integer() and abs(value) < EXACT_FLOAT_MAX:
        value = int(value)
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= maximum


class ServerErrorsAsResponses(Client):
    """A test client that answers an exception in a view with the 500 a server would send."""

    def __init__(self, **defaults: Any) -> None:
        super().__init__(raise_request_exception=False, **defaults)


class TradeApiPropertyTests(TestCase):
    client_class = ServerErrorsAsResponses
    tally = Tally()
    account_ids: list[int]
    key: str

    @classmethod
    def setUpTestData(cls) -> None:
        cls.account_ids = [account_create(owner=f"prop-{n}", balance=1000).pk for n in range(3)]
        cls.key = api_key_new("properties")

    @classmethod
    def tearDownClass(cls) -> None:
        sys.stderr.write(f"\n{cls.tally.line()}\n")
        super().tearDownClass()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send one request with the class's API key; check the answer is never a 500 and is JSON; count it."""
        client_authenticate(self.client, self.key)  # a client of its own per example
        response = getattr(self.client, method)(path, **kwargs)
        self.tally.statuses[response.status_code] += 1
        if response.status_code >= 500:
            self.tally.server_errors += 1
        note(f"{method.upper()} {path} -> {response.status_code} {response.content[:300]!r}")
        self.assertLess(response.status_code, 500)
        self.assertTrue(response["Content-Type"].startswith("application/json"), response["Content-Type"])
        answer = response.json()
        if response.status_code >= 400:
            self.assertIsInstance(answer["error"], str)
            self.assertTrue(answer["error"])
        return response

    def post_trade(self, body: bytes, *, content_type: str, key: str | None = None) -> Any:
        """POST a trade; a refusal must leave every table as it was, an acceptance add one trade."""
        before = _writes()
        headers = {} if key is None else {"Idempotency-Key": key}
        response = self.request("post", TRADES_URL, data=body, content_type=content_type, headers=headers)
        after = _writes()
        expected = (
            before
            if response.status_code >= 400
            else (before[0] + 1, before[1] + 1, before[2] + 1, before[3])
        )
        if after != expected:
            self.tally.effects += 1
        self.assertEqual(after, expected, "(trades, outbox rows, stream seqs, ledger entries)")
        return response

    @EXAMPLES
    @given(
        account=bean_counts,  # mostly unknown accounts and wrong types
        real_account=st.booleans(),  # or one that exists
        beans=bean_counts,
        extra=st.dictionaries(
            st.text(max_size=10).filter(lambda k: k not in {"account", "beans"}), json_values
        ),
        drop=st.sampled_from([(), ("account",), ("beans",), ("account", "beans")]),
        key=header_values,
    )
    @example(account=0, real_account=True, beans=100, extra={}, drop=(), key=None)  # the one valid shape
    @example(account=10**6, real_account=False, beans=100, extra={}, drop=(), key=None)  # unknown account
    def test_trade_shaped_bodies_get_the_status_the_contract_names(
        self,
        account: Any,
        real_account: bool,
        beans: Any,
        extra: dict[str, Any],
        drop: tuple[str, ...],
        key: Any,
    ) -> None:
        if real_account:
            account = self.account_ids[0]
        body = {"account": account, "beans": beans, **extra}
        for field in drop:
            del body[field]
        try:
            raw = json.dumps(body).encode()
        except ValueError:  # an int beyond Python's 4,300-digit str limit: send the digits by hand
            raw = b'{"account": 1, "beans": ' + b"9" * 5000 + b"}"
        response = self.post_trade(raw, content_type="application/json", key=key)

        well_formed = (
            set(body) == {"account", "beans"}
            and _is_positive_int(body["account"], BIGINT_MAX)
            and _is_positive_int(body["beans"], settings.TRADES_MAX_BEANS)
            and len(raw) <= MAX_BODY_BYTES
            and (key is None or _usable_key(key, IDEMPOTENCY_KEY_MAX_LENGTH))
        )
        if not well_formed:
            self.assertEqual(response.status_code, 400)
        elif body["account"] not in self.account_ids:
            self.assertEqual(response.status_code, 404)
        else:
            self.assertEqual(response.status_code, 201)
            self.assertEqual((response.json()["account"], response.json()["beans"]), (account, beans))

    @EXAMPLES
    @given(
        orders=st.lists(
            st.fixed_dictionaries({"account": st.sampled_from([0, 1, 2]), "beans": st.integers(1, 10**6)})
            | st.fixed_dictionaries({"account": bean_counts, "beans": bean_counts})
            | json_values,
            max_size=settings.TRADES_BATCH_MAX + 3,
        )
        | json_values,
        real_accounts=st.booleans(),
        key=header_values,
    )
    @example(orders=[{"account": 0, "beans": 5}, {"account": 1, "beans": 7}], real_accounts=True, key=None)
    def test_batches_are_placed_whole_or_refused_whole(
        self, orders: Any, real_accounts: bool, key: Any
    ) -> None:
        if real_accounts and isinstance(orders, list):  # account 0, 1, 2 -> the real accounts
            orders = [
                {**order, "account": self.account_ids[order["account"]]}
                if isinstance(order, dict) and order.get("account") in (0, 1, 2)
                else order
                for order in orders
            ]
        try:
            raw = json.dumps({"trades": orders}).encode()
        except ValueError:
            raw = b'{"trades": [{"account": 1, "beans": ' + b"9" * 5000 + b"}]}"
        before = _writes()
        headers = {} if key is None else {"Idempotency-Key": key}
        response = self.request("post", BATCH_URL, data=raw, content_type="application/json", headers=headers)
        placed = len(response.json()["trades"]) if response.status_code < 400 else 0
        expected = (before[0] + placed, before[1] + placed, before[2] + placed, before[3])
        if _writes() != expected:
            self.tally.effects += 1
        self.assertEqual(_writes(), expected, "(trades, outbox rows, stream seqs, ledger entries)")

        well_formed = (
            isinstance(orders, list)
            and 0 < len(orders) <= settings.TRADES_BATCH_MAX
            and all(
                isinstance(order, dict)
                and set(order) == {"account", "beans"}
                and _is_positive_int(order["account"], BIGINT_MAX)
                and _is_positive_int(order["beans"], settings.TRADES_MAX_BEANS)
                for order in orders
            )
            and len(raw) <= MAX_BATCH_BODY_BYTES
            and (key is None or _usable_key(key, BATCH_IDEMPOTENCY_KEY_MAX_LENGTH))
        )
        if not well_formed:
            self.assertEqual(response.status_code, 400)
        elif any(order["account"] not in self.account_ids for order in orders):
            self.assertEqual(response.status_code, 404)
        else:
            self.assertEqual(response.status_code, 201)
            self.assertEqual(placed, len(orders))

    @EXAMPLES
    @given(key=header_values, beans=st.integers(min_value=1, max_value=settings.TRADES_MAX_BEANS))
    @example(key="\x00", beans=1)  # PostgreSQL cannot store NUL: refused before the write
    def test_idempotency_keys_are_checked_and_a_repeat_writes_nothing(self, key: Any, beans: int) -> None:
        raw = json.dumps({"account": self.account_ids[1], "beans": beans}).encode()
        first = self.post_trade(raw, content_type="application/json", key=key)
        usable = key is None or _usable_key(key, IDEMPOTENCY_KEY_MAX_LENGTH)
        self.assertEqual(first.status_code, 201 if usable else 400)
        if key is not None and usable:
            before = _writes()
            again = self.request(
                "post",
                TRADES_URL,
                data=raw,
                content_type="application/json",
                headers={"Idempotency-Key": key},
            )
            self.assertEqual((again.status_code, again.json()["id"]), (200, first.json()["id"]))
            self.assertEqual(_writes(), before, "a repeated request writes nothing")

    @EXAMPLES
    @given(body=json_values)
    def test_any_json_document_is_answered_without_a_500(self, body: Any) -> None:
        try:
            raw = json.dumps(body).encode()
        except ValueError:
            raw = b"9" * 5000
        self.post_trade(raw, content_type="application/json")

    @EXAMPLES
    @given(
        raw=st.binary(max_size=600)
        | st.text(max_size=300).map(lambda text: text.encode("utf-8", errors="surrogatepass"))
        | st.builds(
            lambda prefix, junk, suffix: prefix + junk + suffix,
            st.sampled_from([b'{"account": 1, "beans": 30', b'{"', b"[", b""]),
            st.sampled_from(
                [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x00", b"\xf8\x88\x80\x80\x80", b"\x80"]
            ),
            st.sampled_from([b"}", b'": 1}', b"]", b""]),
        ),
        content_type=st.sampled_from(["application/json", "application/json; charset=utf-8"]),
    )
    def test_bytes_that_are_not_json_or_not_utf8_are_refused(self, raw: bytes, content_type: str) -> None:
        try:
            parsed = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError):
            parsed = None
        response = self.post_trade(raw, content_type=content_type)
        if not isinstance(parsed, dict) or set(parsed) != {"account", "beans"}:
            self.assertEqual(response.status_code, 400)

    @EXAMPLES
    @given(
        size=st.integers(min_value=MAX_BODY_BYTES + 1, max_value=20_000)
        | st.sampled_from([settings.DATA_UPLOAD_MAX_MEMORY_SIZE, settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1]),
        content_type=st.sampled_from(["application/json", "text/plain"]),
    )
    def test_oversized_bodies_are_refused(self, size: int, content_type: str) -> None:
        valid = json.dumps({"account": self.account_ids[0], "beans": 1}).encode()
        response = self.post_trade(valid + b" " * (size - len(valid)), content_type=content_type)
        self.assertEqual(response.status_code, 400)

    @EXAMPLES
    @given(content_type=other_content_types)
    def test_other_content_types_are_refused(self, content_type: str) -> None:
        valid = json.dumps({"account": self.account_ids[0], "beans": 1}).encode()
        response = self.post_trade(valid, content_type=content_type)
        self.assertEqual(response.status_code, 400)

    @EXAMPLES
    @given(
        target=st.sampled_from(["trade", "account_trades", "account"]),
        object_id=st.integers(min_value=0, max_value=10**30) | st.sampled_from([0, 1, 2, 3, BIGINT_MAX + 1]),
        limit=st.none() | st.text(max_size=12) | st.integers(min_value=-(10**20), max_value=10**20).map(str),
    )
    def test_get_endpoints_answer_json_for_any_id_and_limit(
        self, target: str, object_id: int, limit: Any
    ) -> None:
        path = {
            "trade": f"{TRADES_URL}{object_id}/",
            "account_trades": f"/api/accounts/{object_id}/trades/",
            "account": f"/api/accounts/{object_id}/",
        }[target]
        before = _writes()
        response = self.request("get", path, data={} if limit is None else {"limit": limit})
        self.assertEqual(_writes(), before)
        exists = (
            Trade.objects.filter(pk=object_id).exists()
            if target == "trade" and object_id <= BIGINT_MAX
            else object_id in self.account_ids
        )
        if target == "account_trades":
            # An ASCII integer is a limit (brought into 1..500); what int() refuses is a 400; what
            # int() takes but an integer's schema need not (" 5", "1_0", other scripts' digits)
            # is either, never a 500.
            text = "50" if limit is None else limit
            if re.fullmatch(r"[+-]?[0-9]+", text):
                self.assertEqual(response.status_code, 200)
            elif not _int_parses(text):
                self.assertEqual(response.status_code, 400)
            else:
                self.assertIn(response.status_code, {200, 400})
        else:
            self.assertEqual(response.status_code, 200 if exists else 404)

    @EXAMPLES
    @given(
        method=st.sampled_from(["get", "put", "patch", "delete", "options"]),
        path=st.sampled_from([TRADES_URL, f"{TRADES_URL}1/"]),
    )
    def test_other_methods_are_refused_with_json(self, method: str, path: str) -> None:
        if (method, path) == ("get", f"{TRADES_URL}1/"):
            path = f"{TRADES_URL}999999/"  # a GET there is allowed: make it a 404
        before = _writes()
        response = self.request(method, path)
        self.assertEqual(_writes(), before)
        self.assertIn(response.status_code, {404, 405})
        self.assertEqual(Account.objects.count(), len(self.account_ids))
