"""Bad input at the consumer, property-based: whatever arrives, a dead letter with a reason, never an effect it should not have.

Hypothesis feeds the bean service's real exactly-once task code (``message_consume`` and
``batch_consume`` with the real deduction handlers, against the real database) with:

* arbitrary JSON as the envelope (not an object, missing or mistyped fields);
* unsigned, forged and tampered envelopes;
* authentic (signed) envelopes whose payload is malformed: wrong types, huge numbers, zero or
  negative beans, unknown accounts, text with NUL and lone surrogates;
* batch envelopes mixing all of these with valid deductions.

The properties: the call returns (a poison message never raises, so it can never requeue
forever and stall a worker); a message that is not a valid, authentic deduction for an existing
account leaves a dead letter with a reason and changes no balance, ledger, message log or
outbox; a valid one deducts exactly its beans once; no balance goes negative. The tally (cases
tried, unexpected exceptions, effects from bad messages) is written to stderr at the end.
"""

import json
import sys
import uuid
from collections import Counter
from typing import Any

from django.conf import settings
from django.db.models import Sum
from hypothesis import given, note
from hypothesis import strategies as st
from hypothesis.extra.django import TestCase

from beans.models import Account, LedgerEntry
from beans.services import account_create, deduction_apply, deductions_apply
from reliability.consume.task import batch_consume, message_consume
from reliability.envelope import BATCH, ENVELOPE_VERSION, envelope_sign
from reliability.models import DeadLetter, MessageLog, OutboxMessage
from tests.fakes import fake_task
from tests.strategies import examples
from tests.strategies import json_values as json_values_of

BEANS = settings.BEANS_DATABASE
TASK = fake_task("beans.deduct")
BALANCE = 1_000
BIGINT_MAX = 2**63 - 1
EXAMPLES = examples(150)
json_values = json_values_of(finite=True)
odd_text = st.text(alphabet=st.characters(codec=None, categories=None), max_size=20) | st.sampled_from(
    ["\x00", "a\x00b", "\ud800", "\udfff tail", "é€😀"]
)
bad_amounts = (
    st.integers(max_value=0)
    | st.integers(min_value=2**63, max_value=2**90)
    | st.sampled_from([0, -1, -(2**63), 2**63, 2**64, True, False, None, "100", 1.5, [100], {"beans": 1}])
    | odd_text
)


def unstorable(value: Any) -> bool:
    """Text PostgreSQL's jsonb refuses."""
    return isinstance(value, str) and any(c == "\x00" or 0xD800 <= ord(c) <= 0xDFFF for c in value)


class Tally:
    def __init__(self) -> None:
        self.outcomes: Counter[str] = Counter()
        self.cases = 0
        self.raised = 0
        self.bad_effects = 0


TALLY = Tally()


def signed(message_id: str, seq: int, payload: Any, *, stream: str = "deductions.prop") -> dict[str, Any]:
    return envelope_sign(
        {
            "v": ENVELOPE_VERSION,
            "message_id": message_id,
            "stream": stream,
            "seq": seq,
            "high": seq,
            "produced_at": "",
            "payload": payload,
        }
    )


def deduction_target(payload: Any) -> Account | None:
    """The existing account a well-formed deduction payload names, else None (poison)."""

    def positive(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= BIGINT_MAX

    if not isinstance(payload, dict) or not all(
        positive(payload.get(key)) for key in ("trade_id", "account_id", "beans")
    ):
        return None
    return Account.objects.filter(pk=payload["account_id"]).first()


class ConsumerPropertyTests(TestCase):
    databases = "__all__"

    @classmethod
    def tearDownClass(cls) -> None:
        super().tearDownClass()
        sys.stderr.write(
            f"\nconsumer properties: {TALLY.cases} cases tried, {TALLY.raised} raised, "
            f"{TALLY.bad_effects} effects from bad messages; outcomes {dict(TALLY.outcomes)}\n"
        )

    def setUp(self) -> None:
        self.account = account_create(owner="prop", balance=BALANCE).pk

    def consume(self, envelope: Any) -> str:
        TALLY.cases += 1
        try:
            if isinstance(envelope, dict) and envelope.get("kind") == BATCH:
                outcome = batch_consume(
                    task=TASK,
                    envelope=envelope,
                    handler=deduction_apply,
                    batch_handler=deductions_apply,
                    using=BEANS,
                    ordered=True,
                )
            else:
                outcome = message_consume(
                    task=TASK, envelope=envelope, handler=deduction_apply, using=BEANS, ordered=True
                )
        except BaseException:
            TALLY.raised += 1
            raise
        TALLY.outcomes[outcome.split(":")[0]] += 1
        note(f"outcome {outcome!r}")
        return outcome

    def effects(self) -> tuple[int, int, int, int]:
        return (
            LedgerEntry.objects.filter(kind=LedgerEntry.Kind.DEDUCTION).count(),
            int(Account.objects.aggregate(total=Sum("balance"))["total"] or 0),
            MessageLog.objects.using(BEANS).count(),
            OutboxMessage.objects.using(BEANS).count(),
        )

    def assert_no_effect(self, before: tuple[int, int, int, int]) -> None:
        after = self.effects()
        if after[:2] != before[:2]:
            TALLY.bad_effects += 1
        self.assertEqual(after[0], before[0], "no ledger entry")
        self.assertEqual(after[1], before[1], "no balance change")
        self.assertEqual(after[3], before[3], "no outcome message")

    @EXAMPLES
    @given(envelope=json_values)
    def test_arbitrary_json_is_dead_lettered_and_changes_nothing(self, envelope: Any) -> None:
        before = self.effects()
        self.assertEqual(self.consume(json.loads(json.dumps(envelope))), "dead-lettered")
        self.assert_no_effect(before)
        self.assertEqual(MessageLog.objects.using(BEANS).count(), before[2])
        letter = DeadLetter.objects.using(BEANS).latest("id")
        self.assertIn(letter.reason, {DeadLetter.Reason.INVALID_ENVELOPE, DeadLetter.Reason.UNAUTHENTIC})
        self.assertTrue(letter.detail)

    @EXAMPLES
    @given(
        field=st.sampled_from(["message_id", "stream", "seq", "payload", "produced_at", "kid", "sig", "v"]),
        value=json_values,
    )
    def test_a_tampered_or_forged_field_is_refused_as_unauthentic(self, field: str, value: Any) -> None:
        genuine = signed(str(uuid.uuid4()), 1, {"trade_id": 1, "account_id": self.account, "beans": 10})
        tampered = json.loads(json.dumps({**genuine, field: value}))
        before = self.effects()
        outcome = self.consume(tampered)
        if tampered == json.loads(json.dumps(genuine)):  # hypothesis drew the same value
            return
        self.assertEqual(outcome, "dead-lettered")
        self.assert_no_effect(before)
        self.assertEqual(MessageLog.objects.using(BEANS).count(), before[2], "no message-log row")

    @EXAMPLES
    @given(
        trade_id=st.one_of(st.integers(min_value=1, max_value=2**62), bad_amounts),
        account=st.one_of(st.just("mine"), st.integers(min_value=-5, max_value=2**70), bad_amounts),
        beans=st.one_of(st.integers(min_value=1, max_value=2 * BALANCE), bad_amounts),
        extra=st.dictionaries(st.text(max_size=5), json_values, max_size=2),
    )
    def test_an_authentic_message_with_a_malformed_payload_never_deducts_wrongly(
        self, trade_id: Any, account: Any, beans: Any, extra: dict[str, Any]
    ) -> None:
        payload = {
            **extra,
            "trade_id": trade_id,
            "account_id": self.account if account == "mine" else account,
        }
        payload["beans"] = beans
        envelope = json.loads(json.dumps(signed(str(uuid.uuid4()), 1, payload)))
        before = self.effects()
        target = deduction_target(envelope["payload"])
        outcome = self.consume(envelope)
        if target is not None and beans <= target.balance:
            self.assertEqual(outcome, "deducted")
            self.assertEqual(
                self.effects()[:2], (before[0] + 1, before[1] - beans), "exactly its beans, once"
            )
        elif target is not None:
            self.assertEqual(outcome, "rejected", "insufficient funds: a business outcome, no effect")
            after = self.effects()
            self.assertEqual(after[:2], before[:2], "no ledger entry, no balance change")
            self.assertEqual(after[3], before[3] + 1, "the rejection is reported back to the trade")
        else:
            self.assertEqual(outcome, "dead-lettered")
            self.assert_no_effect(before)
            letter = DeadLetter.objects.using(BEANS).latest("id")
            self.assertEqual(letter.reason, DeadLetter.Reason.HANDLER_FAILED)
            self.assertTrue(letter.detail)
        self.assertFalse(Account.objects.filter(balance__lt=0).exists())

    @EXAMPLES
    @given(
        items=st.lists(
            st.one_of(
                st.integers(min_value=1, max_value=300).map(lambda beans: ("valid", beans)),
                bad_amounts.map(lambda beans: ("bad beans", beans)),
                json_values.map(lambda junk: ("junk", junk)),
                st.just(("forged", 10)),
            ),
            min_size=1,
            max_size=8,
        )
    )
    def test_a_batch_applies_its_valid_deductions_once_and_dead_letters_the_rest(
        self, items: list[tuple[str, Any]]
    ) -> None:
        messages: list[Any] = []
        for seq, (kind, value) in enumerate(items, start=1):
            message_id = str(uuid.uuid4())
            payload = {"trade_id": seq, "account_id": self.account, "beans": value}
            if kind == "junk":
                messages.append(value)
                continue
            envelope = signed(message_id, seq, payload)
            if kind == "forged":
                envelope = {**envelope, "payload": {**payload, "beans": 1}}
            messages.append(envelope)
        batch = json.loads(json.dumps({"v": ENVELOPE_VERSION, "kind": BATCH, "messages": messages}))
        self.consume(batch)
        # Expected, by the rules applied one message at a time: valid deductions in seq order
        # while funds last (else rejected, no effect); a poison payload is dead-lettered and its
        # seq released; junk and forgeries are dead-lettered but, not being authentic, release
        # nothing: what follows them waits (parked) until the real message comes.
        expected: dict[int, int] = {}
        balance = BALANCE
        for seq, (kind, value) in enumerate(items, start=1):
            if kind in {"junk", "forged"}:
                break
            if kind == "valid" and value <= balance:
                expected[seq] = value
                balance -= value
        applied = {
            int(entry.trade_id or 0): entry.beans
            for entry in LedgerEntry.objects.filter(kind=LedgerEntry.Kind.DEDUCTION)
        }
        if set(applied) - set(expected):
            TALLY.bad_effects += 1
        self.assertEqual(applied, expected)
        self.assertEqual(Account.objects.get(pk=self.account).balance, balance, "opening - applied")
        # Junk and forgeries are dead-lettered at once; a poison payload once it is its turn
        # (behind a missing seq it waits, parked, like any message), unless the database cannot
        # even hold it to park it (NUL, a lone surrogate): then at once too.
        blocked_from = next(
            (n for n, (kind, _) in enumerate(items) if kind in {"junk", "forged"}), len(items)
        )
        self.assertEqual(
            DeadLetter.objects.using(BEANS).count(),
            sum(1 for kind, _ in items if kind in {"junk", "forged"})
            + sum(1 for kind, value in items if kind == "bad beans" and unstorable(value))
            + sum(1 for kind, value in items[:blocked_from] if kind == "bad beans" and not unstorable(value)),
            "every bad message is a dead letter, with its reason",
        )
