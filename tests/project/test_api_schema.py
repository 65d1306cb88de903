"""The live API against its own OpenAPI document: schemathesis through a real gunicorn.

For every operation of ``/api/openapi.json``, schemathesis generates requests that fit the
schema (positive) and requests that break it (negative), sends them with an API key to
gunicorn with ``DEBUG`` off, and checks each answer: never a 500, a status the schema
documents, a body and headers that conform to it, schema-valid data accepted and invalid
data refused. On top, whatever the answer, a refusal (4xx) writes nothing: no trade, no
outbox row, no stream position. Positive trade requests are pointed at real accounts half of
the time, so that placements, repeats (200) and conflicts (409) happen, not only 404s.
"""

import sys
from collections import Counter
from typing import Any

import schemathesis
from django.db.models import Sum
from django.test import TransactionTestCase, tag
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from beans.services import account_create
from harness.environment import subprocess_env
from harness.web import Gunicorn
from reliability.models import OutboxMessage, StreamCounter
from tests.api import api_key_new, bearer
from trades.models import Trade

EXAMPLES_PER_OPERATION_AND_MODE = 40


def _writes() -> tuple[int, int, int]:
    last_seqs = StreamCounter.objects.aggregate(total=Sum("last_seq"))["total"] or 0
    return Trade.objects.count(), OutboxMessage.objects.count(), last_seqs


@tag("integration")
class ApiSchemaConformanceTests(TransactionTestCase):
    def test_every_operation_answers_as_its_schema_says_and_refusals_write_nothing(self) -> None:
        accounts = [account_create(owner=f"schema-{n}", balance=10**6).pk for n in range(3)]
        key = api_key_new("schemathesis")
        server = Gunicorn(subprocess_env({}))
        self.addCleanup(server.stop)
        server.wait_answering()

        schema = schemathesis.openapi.from_url(server.url("/api/openapi.json"))
        statuses: Counter[tuple[str, int]] = Counter()
        operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
        self.assertEqual(len(operations), 5, [f"{op.method} {op.path}" for op in operations])

        for operation in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                label = f"{operation.method.upper()} {operation.path} ({mode.value})"
                with self.subTest(label):
                    self.exchanges(
                        operation, mode, label, server=server, key=key, accounts=accounts, tally=statuses
                    )

        placed = sum(n for (label, status), n in statuses.items() if status == 201)
        sys.stderr.write(f"\nschemathesis against gunicorn: {dict(sorted(statuses.items()))}\n")
        self.assertGreater(placed, 0, "no generated request placed a trade: the test would prove little")

    def exchanges(
        self,
        operation: Any,
        mode: GenerationMode,
        label: str,
        *,
        server: Gunicorn,
        key: str,
        accounts: list[int],
        tally: Counter[tuple[str, int]],
    ) -> None:
        """Send one operation's generated requests; check each answer and what it wrote."""

        @settings(
            max_examples=EXAMPLES_PER_OPERATION_AND_MODE,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(
            case=operation.as_strategy(generation_mode=mode),
            real_account=st.sampled_from([None, *accounts]),
        )
        def exchange(case: Any, real_account: int | None) -> None:
            if real_account is not None and mode is GenerationMode.POSITIVE:
                _aim_at(case, real_account)
            before = _writes()
            # The real key, unless a negative case left the header out to see it refused.
            sends_key = mode is GenerationMode.POSITIVE or "Authorization" in (case.headers or {})
            response = case.call(
                base_url=server.url(""), headers=bearer(key) if sends_key else None, timeout=30
            )
            tally[(label, response.status_code)] += 1
            case.validate_response(response)
            if response.status_code >= 400:
                self.assertEqual(_writes(), before, f"{label}: a {response.status_code} wrote")

        exchange()


def _aim_at(case: Any, account: int) -> None:
    """Point a generated trade (or batch) at an account that exists."""
    if isinstance(case.body, dict) and "account" in case.body:
        case.body["account"] = account
    elif isinstance(case.body, dict) and isinstance(case.body.get("trades"), list):
        for order in case.body["trades"]:
            if isinstance(order, dict):
                order["account"] = account
    if case.path_parameters and "account_id" in case.path_parameters:
        case.path_parameters["account_id"] = account
