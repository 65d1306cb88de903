"""The pipeline's invariants, checked against both services' databases (``manage.py verify``,
the tests and the chaos checker). Project-level: it reads the trade service, the bean service and
the reliability tables together, which neither app may do.
"""

from collections import Counter
from dataclasses import dataclass

from django.conf import settings

from beans.contracts import DEDUCT_TASK
from beans.selectors import deductions_by_message_id, ledger_totals_by_account
from beans.services import DeductionOutcome
from reliability.models import MessageLog, OutboxMessage
from reliability.ops.retention import retention_cutoffs, retention_message_made_at
from trades.models import Trade
from trades.selectors import trade_counts_by_status


@dataclass
class Verification:
    """What ``pipeline_verify`` found: the violations, and how many messages were past retention
    (their outbox or message-log rows may be gone: checked against what remains, not counted)."""

    violations: list[str]
    past_outbox_retention: int = 0
    past_message_log_retention: int = 0


def pipeline_violations(*, in_flight_ok: bool = False) -> list[str]:
    """The violations of ``pipeline_verify``."""
    return pipeline_verify(in_flight_ok=in_flight_ok).violations


def pipeline_verify(*, in_flight_ok: bool = False) -> Verification:
    """Check invariants I1, I2, I3, I5 and I9 (shared/reliability.md).

    Meant to run after the pipeline drained: a pending trade counts as a
    violation (lost or stuck) unless ``in_flight_ok``. A trade whose outbox message, or a
    deduction whose message-log row, retention may have removed (made before the cutoff,
    ``retention_cutoffs``) is not a violation when that row is missing: the trade and its
    ledger entry are still checked (I1, I2, I9), and the row is checked while it is there.
    """
    violations: list[str] = []
    cutoffs = retention_cutoffs()
    deductions = deductions_by_message_id()
    trades = list(Trade.objects.values_list("id", "status", "beans", "deduction_message_id", "created_at"))
    trade_messages = {str(trade_message_id) for _, _, _, trade_message_id, _ in trades}
    # When retention dates each trade's message: the time in its id, else the trade's own time
    # (written before its outbox row and before any message-log row of it).
    made_at = {
        str(message_id): retention_message_made_at(message_id, otherwise=created_at)
        for _, _, _, message_id, created_at in trades
    }

    for trade_id, status, beans, trade_message_id, _ in trades:
        applied = deductions.get(str(trade_message_id), 0)
        if beans <= 0:
            violations.append(f"I9: trade {trade_id} has {beans} beans")
        if status == Trade.Status.DEDUCTED and applied != 1:
            violations.append(f"I1/I2: trade {trade_id} is deducted but has {applied} ledger deductions")
        elif status == Trade.Status.REJECTED and applied != 0:
            violations.append(f"I9: trade {trade_id} was rejected but has {applied} ledger deductions")
        elif status == Trade.Status.PENDING and not in_flight_ok:
            violations.append(f"I1: trade {trade_id} is still pending ({applied} ledger deductions)")
    # The figures /metrics shows are kept beside the trades, in the statement that settles them.
    in_table = Counter(status for _, status, _, _, _ in trades)
    for status, counted in trade_counts_by_status().items():
        if counted != in_table.get(status, 0):
            violations.append(
                f"I5: {counted} trades counted {status} for /metrics, {in_table.get(status, 0)} in the table"
            )
    for orphan in deductions.keys() - trade_messages:
        violations.append(f"I3: ledger deduction from message {orphan} matches no trade")

    outbox = set(OutboxMessage.objects.filter(task_name=DEDUCT_TASK).values_list("message_id", flat=True))
    outbox_ids = {str(message_id) for message_id in outbox}
    past_outbox = {m for m in trade_messages if made_at[m] < cutoffs["outbox"]}
    for message_id in trade_messages - outbox_ids - past_outbox:
        violations.append(f"I5: trade with deduction message {message_id} has no outbox message")
    for message_id in outbox_ids - trade_messages:
        violations.append(f"I5: outbox message {message_id} has no trade")

    applied_log = {
        str(message_id)
        for message_id in MessageLog.objects.using(settings.BEANS_DATABASE)
        .filter(handler=DEDUCT_TASK, outcome=DeductionOutcome.DEDUCTED)
        .values_list("message_id", flat=True)
    }
    past_log = {m for m in deductions.keys() & trade_messages if made_at[m] < cutoffs["message_log"]}
    for message_id in applied_log - deductions.keys():
        violations.append(f"I5: message log says {message_id} was deducted but the ledger has no entry")
    for message_id in deductions.keys() - applied_log - past_log:
        violations.append(f"I5: ledger deduction from {message_id} has no message-log row")

    for account_id, row in ledger_totals_by_account().items():
        if row["balance"] < 0:
            violations.append(f"I9: account {account_id} balance is negative ({row['balance']})")
        expected = row["credited"] - row["deducted"]
        if row["balance"] != expected:
            violations.append(
                f"I2: account {account_id} balance {row['balance']} != credited {row['credited']} "
                f"- deducted {row['deducted']} = {expected}"
            )
    return Verification(
        violations=violations,
        past_outbox_retention=len(past_outbox),
        past_message_log_retention=len(past_log),
    )
