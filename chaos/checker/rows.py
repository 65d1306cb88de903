"""What the checker reads: the rows of the tables, and what the load generator and the nemesis recorded."""

from dataclasses import dataclass, field
from typing import Any, NamedTuple


class Request(NamedTuple):
    """One request of the load generator and what it was told (after its retries)."""

    key: str
    account: int
    beans: int
    outcome: str  # ok | refused | unavailable | indeterminate | not_attempted
    attempts: int = 1
    phase: str = "load"  # load | probe


class TradeRow(NamedTuple):
    id: int
    key: str | None
    account: int
    beans: int
    status: str
    message_id: str
    made_at: float | None = None  # epoch seconds of the trade row (retention dates non-UUIDv7 ids by it)


class LedgerRow(NamedTuple):
    id: int
    account: int
    beans: int
    balance_after: int
    message_id: str
    trade_id: int | None


class OutboxRow(NamedTuple):
    message_id: str
    task_name: str
    stream: str
    seq: int
    status: str
    deduction_message_id: str | None  # outcome messages: the deduction they report on


class LogRow(NamedTuple):
    handler: str
    message_id: str
    stream: str
    seq: int
    outcome: str
    redeliveries: int


class DeadLetterRow(NamedTuple):
    id: int
    handler: str
    reason: str
    message_id: str | None
    envelope_message_id: str | None
    detail: str


@dataclass
class Injected:
    """What the nemesis did on purpose (so the checker can tell it from a failure)."""

    poison: dict[str, str] = field(default_factory=dict)  # message_id -> poison kind
    removed: set[str] = field(default_factory=set)  # message ids taken off a queue
    duplicates_published: int = 0


@dataclass
class Liveness:
    """I10: trades placed after the last fault healed, and whether they settled within the bound."""

    probe_ok: int = 0
    probe_settled: int = 0
    settle_s: float | None = None
    bound_s: float = 0.0
    backlog_at_heal: int = 0  # trades placed but not settled when the last fault healed
    settled_per_s_after_heal: float | None = None
    drained: bool = False
    drain_s: float | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Snapshot:
    initial_balances: dict[int, int]  # as the run opened the accounts
    balances: dict[int, int]
    trades: list[TradeRow]
    ledger: list[LedgerRow]  # deductions only
    outbox: list[OutboxRow]
    message_log: list[LogRow]
    dead_letters: list[DeadLetterRow]
    parked: int
    streams: list[dict[str, Any]]  # reliability.selectors.stream_positions()
    gaps_escalated: int
    queues: dict[str, int | None]  # messages left in each queue (None: could not be read)
    code_violations: list[str] = field(default_factory=list)  # project.invariants.pipeline_violations()
    periodic_tasks: set[str] = field(default_factory=set)  # beat's tasks: disposable, the next period repeats
    # Epoch seconds per table ("outbox", "message_log"): rows of messages made before it may have
    # been removed by retention (reliability.ops.retention.retention_cutoffs). Empty: none was.
    retention_cutoffs: dict[str, float] = field(default_factory=dict)
