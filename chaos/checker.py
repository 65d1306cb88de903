"""The checker: compare the load generator's record with the database and the broker (I1-I10).

It reads the tables with plain SQL (``snapshot_collect``) and decides from that and
from what the load generator and the nemesis recorded (``check``), not from the
pipeline's own counters where it can: a deduction is a ledger row, a trade is found
by the Idempotency-Key the client sent, an account's expected balance is its opening
balance as the run created it minus its ledger deductions, and "rejected for
insufficient funds" is re-decided by replaying each account's trades in sequence
order. The pipeline's own ``pipeline_violations()`` and ``stream_positions()`` are
consulted as well, as a second opinion (their findings are filed under the
invariant they name).

``check`` is pure (rows in, verdict out), so it can be tested on crafted data.
"""

import itertools
import re
import uuid
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from project.contracts import DEDUCT_TASK, OUTCOME_TASK

NEMESIS_STREAM_PREFIX = "chaos."  # streams of the nemesis's own poison messages
EXAMPLES = 20  # violations kept per invariant in the report (the count is always exact)

INVARIANTS = (
    ("I1", "no loss"),
    ("I2", "no double effect; balance == initial - sum of applied"),
    ("I3", "no phantom effect"),
    ("I4", "refused: no effect; indeterminate: 0 or 1"),
    ("I5", "trade iff outbox message; inbox row iff effect"),
    ("I6", "streams contiguous 1..k, no open or escalated gap"),
    ("I7", "per-account order, nothing left parked"),
    ("I8", "quiescence: no pending outbox, empty queues, dead letters explained"),
    ("I9", "business rules: balance >= 0, beans > 0, rejections only for funds"),
    ("I10", "liveness: trades placed after the last heal settle in time"),
)


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


@dataclass
class Verdict:
    violations: dict[str, list[str]]
    counts: dict[str, int]

    @property
    def invariants(self) -> dict[str, bool]:
        return {name: not self.violations[name] for name, _ in INVARIANTS}

    @property
    def passed(self) -> bool:
        return all(self.invariants.values())


def _seq_runs(seqs: list[int]) -> str:
    """Return ``[3, 4, 5, 9]`` as ``3-5, 9`` (at most a few runs)."""
    runs: list[str] = []
    start = prev = None
    for seq in sorted(seqs):
        if start is None:
            start = prev = seq
        elif prev is not None and seq == prev + 1:
            prev = seq
        else:
            runs.append(f"{start}-{prev}" if start != prev else f"{start}")
            start = prev = seq
    if start is not None:
        runs.append(f"{start}-{prev}" if start != prev else f"{start}")
    return ", ".join(runs[:5]) + (" ..." if len(runs) > 5 else "")


def seq_holes_not_past_retention(
    made_of_seq: Mapping[int, float | None],
    *,
    k: int,
    cutoff: float | None,
    known_made_at: dict[int, float],
    start_past: bool,
) -> list[int]:
    """The seqs of ``1..k`` missing from ``made_of_seq`` (seq -> when its retained row's message
    was made, None: unknown) that retention cannot have removed.

    Retention drops whole time slices once past the cutoff, but not necessarily the oldest first
    (a slice whose lock it could not get waits for the next run), so a stream's rows may miss a
    run of seqs in the middle as well as at the start. A missing seq is past retention when its
    message is known (``known_made_at``, from the other table) to have been made before the
    cutoff; else when the retained row just below it was made before the cutoff (a stream's seqs
    are taken in the order its messages are made); else, below every retained row, when
    ``start_past`` (retention removed rows of this table). Without a cutoff, every hole counts.
    """
    holes = []
    below: float | None = None  # when the nearest retained row below was made (None: unknown)
    at_start = True
    for seq in range(1, k + 1):
        if seq in made_of_seq:
            below, at_start = made_of_seq[seq], False
            continue
        if cutoff is not None:
            known = known_made_at.get(seq)
            if known is not None:
                if known < cutoff:
                    continue
            elif (at_start and start_past) or (below is not None and below < cutoff):
                continue
        holes.append(seq)
    return holes


def _made_at(message_id: str, otherwise: float | None) -> float | None:
    """Epoch seconds a message was made, as retention dates it: the time in a UUIDv7, else ``otherwise``."""
    try:
        value = uuid.UUID(message_id)
    except ValueError:
        return otherwise
    return (value.int >> 80) / 1000 if value.version == 7 else otherwise


def check(snapshot: Snapshot, requests: list[Request], injected: Injected, liveness: Liveness) -> Verdict:
    """Verify I1-I10; return every violation, filed by invariant, and the run's counts.

    A row that retention may have removed (its message made before ``retention_cutoffs``) is not
    a violation when it is missing; what does not depend on it (the trade, the ledger, the
    balances, the consumers' watermarks) is still checked.
    """
    found: dict[str, list[str]] = {name: [] for name, _ in INVARIANTS}
    s = snapshot
    made_at_of = {trade.message_id: trade.made_at for trade in s.trades}

    def past(table: str, message_id: str) -> bool:
        cutoff = s.retention_cutoffs.get(table)
        made = _made_at(message_id, made_at_of.get(message_id))
        return cutoff is not None and made is not None and made < cutoff

    trades_by_key: dict[str, list[TradeRow]] = defaultdict(list)
    for trade in s.trades:
        if trade.key is not None:
            trades_by_key[trade.key].append(trade)
    trade_by_message = {trade.message_id: trade for trade in s.trades}
    ledger_by_message: dict[str, list[LedgerRow]] = defaultdict(list)
    for entry in s.ledger:
        ledger_by_message[entry.message_id].append(entry)
    deduct_outbox = {row.message_id: row for row in s.outbox if row.task_name == DEDUCT_TASK}
    outcomes_of: dict[str, list[OutboxRow]] = defaultdict(list)
    for row in s.outbox:
        if row.task_name == OUTCOME_TASK and row.deduction_message_id:
            outcomes_of[row.deduction_message_id].append(row)
    log = {(row.handler, row.message_id): row for row in s.message_log}
    requests_by_key = {request.key: request for request in requests}

    def effects(trade: TradeRow) -> int:
        return len(ledger_by_message.get(trade.message_id, []))

    # I9 first: replay each account's trades in sequence order to tell a rejection for
    # insufficient funds from a lost deduction, from the ledger alone (not the trade status).
    rejected_for_funds: set[int] = set()
    by_account: dict[int, list[TradeRow]] = defaultdict(list)
    for trade in s.trades:
        by_account[trade.account].append(trade)
    for account, trades in by_account.items():
        if account not in s.initial_balances:
            found["I9"].append(f"trades for account {account}, which the run never opened")
            continue
        running = s.initial_balances[account]
        trades.sort(
            key=lambda t: (deduct_outbox[t.message_id].seq if t.message_id in deduct_outbox else 0, t.id)
        )
        for trade in trades:
            applied = effects(trade)
            if applied:
                if running < trade.beans:
                    found["I9"].append(
                        f"trade {trade.id} deducted {trade.beans} beans from account {account} holding {running}"
                    )
                running -= trade.beans * applied
            elif trade.status == "rejected":
                if running >= trade.beans:
                    found["I9"].append(
                        f"trade {trade.id} rejected although account {account} held {running} >= {trade.beans} beans"
                    )
                else:
                    rejected_for_funds.add(trade.id)
    for trade in s.trades:
        if trade.beans <= 0:
            found["I9"].append(f"trade {trade.id} has {trade.beans} beans")
    for account, balance in sorted(s.balances.items()):
        if balance < 0:
            found["I9"].append(f"account {account} balance is negative ({balance})")

    # I1: every accepted request has its trade; every trade has its effect or was rejected for funds.
    lost: set[str] = set()
    for request in requests:
        if request.outcome != "ok":
            continue
        matches = trades_by_key.get(request.key, [])
        if not matches:
            lost.add(f"request:{request.key}")
            found["I1"].append(f"request {request.key} was accepted but no trade has its Idempotency-Key")
        elif (matches[0].account, matches[0].beans) != (request.account, request.beans):
            found["I1"].append(
                f"request {request.key} asked {request.beans} beans from {request.account}, its trade "
                f"{matches[0].id} has {matches[0].beans} from {matches[0].account}"
            )
    for trade in s.trades:
        applied = effects(trade)
        if trade.status == "pending":
            lost.add(f"trade:{trade.id}")
            found["I1"].append(f"trade {trade.id} still pending ({applied} deductions) after drain")
        elif applied == 0 and trade.status != "rejected":
            lost.add(f"trade:{trade.id}")
            found["I1"].append(f"trade {trade.id} is {trade.status} but has no ledger deduction")

    # I2: at most one effect per message; every balance is its opening balance minus its ledger.
    duplicated_effects = 0
    for message_id, entries in ledger_by_message.items():
        if len(entries) > 1:
            duplicated_effects += len(entries) - 1
            found["I2"].append(
                f"message {message_id} deducted {len(entries)} times (ledger {[e.id for e in entries]})"
            )
    ledger_of_account: dict[int, list[LedgerRow]] = defaultdict(list)
    for entry in s.ledger:
        ledger_of_account[entry.account].append(entry)
    for account, initial in sorted(s.initial_balances.items()):
        entries = sorted(ledger_of_account.get(account, []), key=lambda e: e.id)
        expected = initial - sum(entry.beans for entry in entries)
        actual = s.balances.get(account)
        if actual != expected:
            found["I2"].append(
                f"account {account}: balance {actual} != opening {initial} - deductions "
                f"{initial - expected} = {expected}"
            )
        running = initial
        for entry in entries:
            running -= entry.beans
            if entry.balance_after != running:
                found["I2"].append(
                    f"ledger entry {entry.id} of account {account} says balance_after "
                    f"{entry.balance_after}, the entries before it make {running}"
                )
                break

    # I3: every effect comes from a produced message of a trade a client asked for.
    for message_id, entries in ledger_by_message.items():
        source = trade_by_message.get(message_id)
        if source is None:
            found["I3"].append(
                f"ledger deduction(s) {[e.id for e in entries]} from message {message_id}: no trade"
            )
        elif any(
            (e.account, e.beans, e.trade_id) != (source.account, source.beans, source.id) for e in entries
        ):
            found["I3"].append(f"ledger deduction from message {message_id} does not match trade {source.id}")
        if message_id not in deduct_outbox and not past("outbox", message_id):
            found["I3"].append(f"ledger deduction from message {message_id}: no outbox message produced it")
        if message_id in injected.poison:
            found["I3"].append(f"injected {injected.poison[message_id]} message {message_id} deducted beans")
    for message_id, kind in injected.poison.items():
        inbox = log.get((DEDUCT_TASK, message_id))
        if inbox is not None and inbox.outcome not in {"", "dead-lettered"}:
            found["I3"].append(f"injected {kind} message {message_id} was applied ({inbox.outcome})")
    for trade in s.trades:
        if trade.key is None or trade.key not in requests_by_key:
            found["I3"].append(f"trade {trade.id} has Idempotency-Key {trade.key!r}, which no client sent")

    # I4: a refused request has no effect; an indeterminate one has 0 or 1.
    indeterminate_committed = 0
    for request in requests:
        matches = trades_by_key.get(request.key, [])
        if request.outcome in {"refused", "unavailable", "not_attempted"} and matches:
            found["I4"].append(
                f"request {request.key} was {request.outcome}, yet trade {matches[0].id} exists"
            )
        elif request.outcome == "indeterminate":
            if len(matches) > 1 or any(effects(trade) > 1 for trade in matches):
                found["I4"].append(f"indeterminate request {request.key} had more than one effect")
            indeterminate_committed += bool(matches)

    # I5: atomicity of trade and outbox message, of effect and inbox row, and of the outcome.
    past_outbox = past_log = 0
    for trade in s.trades:
        # The outcome message is made after the deduction: past retention only if the deduction is.
        outbox_past, log_past = past("outbox", trade.message_id), past("message_log", trade.message_id)
        past_outbox += outbox_past
        past_log += log_past
        if trade.message_id not in deduct_outbox and not outbox_past:
            found["I5"].append(f"trade {trade.id} has no outbox message {trade.message_id}")
        if trade.status != "pending":
            outcome_rows = outcomes_of.get(trade.message_id, [])
            if len(outcome_rows) > 1 or (not outcome_rows and not outbox_past):
                found["I5"].append(
                    f"trade {trade.id} is {trade.status} with {len(outcome_rows)} outcome messages"
                )
            elif (
                outcome_rows
                and (OUTCOME_TASK, outcome_rows[0].message_id) not in log
                and not past("message_log", outcome_rows[0].message_id)
            ):
                found["I5"].append(f"trade {trade.id} is settled but its outcome message has no inbox row")
            if (DEDUCT_TASK, trade.message_id) not in log and not log_past:
                found["I5"].append(f"trade {trade.id} is settled but its deduction has no inbox row")
        if trade.status == "rejected" and effects(trade):
            found["I5"].append(f"trade {trade.id} is rejected, yet its deduction was applied")
    for message_id in deduct_outbox.keys() - trade_by_message.keys():
        found["I5"].append(f"outbox message {message_id} has no trade")
    for deduction_id in outcomes_of.keys() - trade_by_message.keys():
        found["I5"].append(f"outcome message for deduction {deduction_id}: no such trade")
    for (handler, message_id), inbox in log.items():
        if handler == DEDUCT_TASK and inbox.outcome == "deducted" and message_id not in ledger_by_message:
            found["I5"].append(f"inbox says {message_id} was deducted; the ledger has no entry")
    for message_id in ledger_by_message:
        applied_row = log.get((DEDUCT_TASK, message_id))
        if applied_row is None and past("message_log", message_id):
            continue
        if applied_row is None or applied_row.outcome != "deducted":
            found["I5"].append(
                f"ledger deduction from {message_id}: inbox row {applied_row.outcome if applied_row else 'missing'}"
            )

    # I6: every produced stream is applied exactly 1..k: from the outbox and the inbox, and as the
    # consumer's own watermarks see it.
    produced: dict[tuple[str, str], dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
    for message in s.outbox:
        produced[(message.task_name, message.stream)][message.seq].append(message.message_id)
    consumed: dict[tuple[str, str], dict[int, str]] = defaultdict(dict)
    for inbox in s.message_log:
        consumed[(inbox.handler, inbox.stream)][inbox.seq] = inbox.message_id
    for (task, stream), ids_of_seq in sorted(produced.items()):
        k = max(ids_of_seq)
        made_of_seq = {seq: _made_at(ids[0], None) for seq, ids in ids_of_seq.items()}
        holes = seq_holes_not_past_retention(
            made_of_seq,
            k=k,
            cutoff=s.retention_cutoffs.get("outbox"),
            known_made_at={},
            start_past=past_outbox > 0,
        )
        doubles = [seq for seq, ids in ids_of_seq.items() if len(ids) > 1]
        if holes or doubles:
            found["I6"].append(f"outbox stream {stream}: holes {_seq_runs(holes)}, doubles {doubles[:5]}")
        applied_ids = consumed.get((task, stream), {})
        missing = seq_holes_not_past_retention(
            {seq: _made_at(message_id, None) for seq, message_id in applied_ids.items()},
            k=k,
            cutoff=s.retention_cutoffs.get("message_log"),
            known_made_at={seq: made for seq, made in made_of_seq.items() if made is not None},
            start_past=past_log > 0,
        )
        if missing:
            found["I6"].append(
                f"stream {stream}: seqs {_seq_runs(missing)} of 1..{k} never applied by {task}"
            )
        extra = {seq for seq in consumed.get((task, stream), set()) if seq > k}
        if extra:
            found["I6"].append(
                f"stream {stream}: {task} applied seqs {_seq_runs(list(extra))} beyond the produced {k}"
            )
    for position in s.streams:
        name = position["stream"]
        if name.startswith(NEMESIS_STREAM_PREFIX):
            continue
        high = position.get("produced_seq")
        if high is None or (position["consumed_watermark"], position["max_seen"]) != (high, high):
            found["I6"].append(
                f"stream {name}: produced {high}, watermark {position['consumed_watermark']}, "
                f"max seen {position['max_seen']}"
            )
        if position.get("gaps_open"):
            found["I6"].append(f"stream {name}: {position['gaps_open']} gaps still open")
    if s.gaps_escalated:
        found["I6"].append(f"{s.gaps_escalated} gaps escalated (the reconciler gave up on them)")

    # I7: each account's deductions were applied in the order its trades were placed.
    for account, entries in sorted(ledger_of_account.items()):
        seqs = [
            deduct_outbox[e.message_id].seq
            for e in sorted(entries, key=lambda e: e.id)
            if e.message_id in deduct_outbox
        ]
        for before, after in itertools.pairwise(seqs):
            if after <= before:
                found["I7"].append(f"account {account}: seq {after} applied after seq {before}")
                break
    if s.parked:
        found["I7"].append(f"{s.parked} messages still parked, waiting for a predecessor")

    # I8: quiescence.
    pending = [row for row in s.outbox if row.status == "pending"]
    if pending:
        found["I8"].append(f"{len(pending)} outbox messages still pending, e.g. {pending[0].message_id}")
    for queue, count in sorted(s.queues.items()):
        if count is None:
            found["I8"].append(f"queue {queue}: could not be read")
        elif count:
            found["I8"].append(f"queue {queue}: {count} messages left")
    explained = expired_periodic = 0
    recorded: set[str] = set()
    for letter in s.dead_letters:
        ids = {letter.message_id, letter.envelope_message_id} - {None}
        recorded |= {i for i in ids if i is not None}
        if ids & injected.poison.keys():
            explained += 1
        elif letter.handler in s.periodic_tasks and "(expired)" in letter.detail:
            # A beat task that outlived its ``expires`` in the queue (the broker was down or
            # the workers behind): it carries no effect, and the next period runs it again.
            expired_periodic += 1
        else:
            found["I8"].append(
                f"dead letter {letter.id} ({letter.handler}, {letter.reason}, message {letter.message_id}) "
                f"is not one the nemesis injected: {letter.detail[:160]}"
            )
    for message_id, kind in sorted(injected.poison.items()):
        if message_id not in recorded and message_id not in injected.removed:
            found["I8"].append(
                f"injected {kind} message {message_id} vanished: neither dead-lettered nor removed"
            )

    # I10: liveness after the last heal.
    if not liveness.drained:
        found["I10"].append(f"the pipeline did not drain within the bound ({liveness.drain_s}s)")
    if liveness.settled_per_s_after_heal == 0:
        found["I10"].append("no trade settled at all after the last fault healed")
    if liveness.probe_ok == 0:
        found["I10"].append("no trade could be placed after the last fault healed")
    elif liveness.probe_settled < liveness.probe_ok:
        found["I10"].append(
            f"{liveness.probe_ok - liveness.probe_settled} of {liveness.probe_ok} trades placed after the "
            f"heal did not settle within {liveness.bound_s:.0f}s"
        )
    found["I10"].extend(liveness.notes)

    # A second opinion: the pipeline's own verify, filed under the invariants it names.
    for violation in s.code_violations:
        names = re.match(r"^(I\d+(?:/I\d+)*):", violation)
        for name in names.group(1).split("/") if names else ["I5"]:
            if name in found:
                found[name].append(f"verify: {violation}")

    counts = Counter(request.outcome for request in requests)
    deducted = sum(1 for trade in s.trades if effects(trade))
    return Verdict(
        violations=found,
        counts={
            "attempted": sum(n for outcome, n in counts.items() if outcome != "not_attempted"),
            "ok": counts["ok"],
            "refused": counts["refused"],
            "unavailable": counts["unavailable"],
            "failed": counts["refused"] + counts["unavailable"],
            "indeterminate": counts["indeterminate"],
            "indeterminate_committed": indeterminate_committed,
            "not_attempted": counts["not_attempted"],
            "retried": sum(1 for request in requests if request.attempts > 1),
            "lost": len(lost),
            "duplicated_deliveries": sum(row.redeliveries for row in s.message_log),
            "duplicated_publishes_injected": injected.duplicates_published,
            "duplicated_effects": duplicated_effects,
            "trades": len(s.trades),
            "deducted": deducted,
            "rejected_for_funds": len(rejected_for_funds),
            "dead_letters": len(s.dead_letters),
            "dead_letters_explained": explained,
            "dead_letters_expired_periodic": expired_periodic,
            "poison_injected": len(injected.poison),
            "messages_removed": len(injected.removed),
            "gaps_found": sum(int(p.get("gaps_found") or 0) for p in s.streams),
            "gaps_healed": sum(int(p.get("gaps_healed") or 0) for p in s.streams),
            "past_outbox_retention": past_outbox,
            "past_message_log_retention": past_log,
        },
    )


def snapshot_collect(*, initial_balances: dict[int, int], queues: dict[str, int | None]) -> Snapshot:
    """Read everything the checker needs from the database, with plain SQL (one database)."""
    from django.conf import settings
    from django.db import connection

    from project.invariants import pipeline_violations
    from reliability.ops.retention import retention_cutoffs
    from reliability.selectors import stream_positions

    def rows(sql: str) -> list[tuple[Any, ...]]:
        with connection.cursor() as cursor:
            cursor.execute(sql)
            return list(cursor.fetchall())

    return Snapshot(
        initial_balances=dict(initial_balances),
        balances=dict(rows("SELECT id, balance FROM beans_account")),
        trades=[
            TradeRow(*row)
            for row in rows(
                "SELECT id, idempotency_key, account_id, beans, status, deduction_message_id::text, "
                "extract(epoch FROM created_at)::float8 FROM trades_trade"
            )
        ],
        ledger=[
            LedgerRow(*row)
            for row in rows(
                "SELECT id, account_id, beans, balance_after, message_id::text, trade_id "
                "FROM beans_ledgerentry WHERE kind = 'deduction'"
            )
        ],
        outbox=[
            OutboxRow(*row)
            for row in rows(
                "SELECT message_id::text, task_name, stream, seq, status, payload->>'deduction_message_id' "
                "FROM reliability_outboxmessage"
            )
        ],
        message_log=[
            LogRow(*row)
            for row in rows(
                "SELECT handler, message_id::text, stream, seq, outcome, redeliveries FROM reliability_messagelog"
            )
        ],
        dead_letters=[
            DeadLetterRow(*row)
            for row in rows(
                "SELECT id, handler, reason, message_id::text, envelope->>'message_id', detail "
                "FROM reliability_deadletter ORDER BY id"
            )
        ],
        parked=int(rows("SELECT count(*) FROM reliability_parkedmessage")[0][0]),
        streams=stream_positions(),
        gaps_escalated=int(
            rows("SELECT count(*) FROM reliability_streamgap WHERE status = 'escalated'")[0][0]
        ),
        queues=dict(queues),
        code_violations=pipeline_violations(),
        periodic_tasks={str(entry["task"]) for entry in settings.CELERY_BEAT_SCHEDULE.values()},
        retention_cutoffs={table: cutoff.timestamp() for table, cutoff in retention_cutoffs().items()},
    )
