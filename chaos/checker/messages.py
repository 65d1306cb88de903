"""The invariants on messages: outbox and inbox against the trades and the ledger, streams, order (I5-I7).

Each ``invariant_*`` takes the run's ``History`` and returns its violations, in a stable order.
"""

import itertools
from collections.abc import Iterable, Mapping
from typing import Any

from beans.contracts import DEDUCT_TASK, OUTCOME_TASK
from chaos.checker.history import History, message_made_at, seq_holes_not_past_retention
from chaos.checker.rows import TradeRow

NEMESIS_STREAM_PREFIX = "chaos."  # streams of the nemesis's own poison messages


def invariant_i5_atomic_trade_outbox_inbox(h: History) -> list[str]:
    """I5: atomicity of trade and outbox message, of effect and inbox row, and of the outcome."""
    found = [problem for trade in h.snapshot.trades for problem in _trade_atomicity(h, trade)]
    # In outbox order, so that every run lists them alike (a set's order follows the hash seed).
    found.extend(
        f"outbox message {message_id} has no trade"
        for message_id in h.deduct_outbox
        if message_id not in h.trade_by_message
    )
    found.extend(
        f"outcome message for deduction {deduction_id}: no such trade"
        for deduction_id in h.outcomes_of
        if deduction_id not in h.trade_by_message
    )
    found.extend(
        f"inbox says {message_id} was deducted; the ledger has no entry"
        for (handler, message_id), inbox in h.log.items()
        if handler == DEDUCT_TASK and inbox.outcome == "deducted" and message_id not in h.ledger_by_message
    )
    for message_id in h.ledger_by_message:
        applied = h.log.get((DEDUCT_TASK, message_id))
        if applied is None and h.past("message_log", message_id):
            continue
        if applied is None or applied.outcome != "deducted":
            found.append(
                f"ledger deduction from {message_id}: inbox row {applied.outcome if applied else 'missing'}"
            )
    return found


def _trade_atomicity(h: History, trade: TradeRow) -> list[str]:
    """The trade's missing outbox message, outcome message or inbox rows (a row past retention
    may be missing; the outcome message is made after the deduction, so it is past retention
    only if the deduction is)."""
    found = []
    outbox_past = h.past("outbox", trade.message_id)
    if trade.message_id not in h.deduct_outbox and not outbox_past:
        found.append(f"trade {trade.id} has no outbox message {trade.message_id}")
    if trade.status != "pending":
        found.extend(_settled_trade_messages(h, trade, outbox_past=outbox_past))
    if trade.status == "rejected" and h.effects(trade):
        found.append(f"trade {trade.id} is rejected, yet its deduction was applied")
    return found


def _settled_trade_messages(h: History, trade: TradeRow, *, outbox_past: bool) -> list[str]:
    """A settled trade has one outcome message, and inbox rows for it and for its deduction."""
    found = []
    outcome_rows = h.outcomes_of.get(trade.message_id, ())
    if len(outcome_rows) > 1 or (not outcome_rows and not outbox_past):
        found.append(f"trade {trade.id} is {trade.status} with {len(outcome_rows)} outcome messages")
    elif (
        outcome_rows
        and (OUTCOME_TASK, outcome_rows[0].message_id) not in h.log
        and not h.past("message_log", outcome_rows[0].message_id)
    ):
        found.append(f"trade {trade.id} is settled but its outcome message has no inbox row")
    if (DEDUCT_TASK, trade.message_id) not in h.log and not h.past("message_log", trade.message_id):
        found.append(f"trade {trade.id} is settled but its deduction has no inbox row")
    return found


def invariant_i6_streams_contiguous(h: History) -> list[str]:
    """I6: every produced stream is applied exactly 1..k: from the outbox and the inbox, and as the
    consumer's own watermarks see it; no gap left open or escalated."""
    found = []
    for (task, stream), ids_of_seq in sorted(h.produced.items(), key=lambda item: item[0]):
        found.extend(_stream_produced_and_applied(h, task, stream, ids_of_seq))
    for position in h.snapshot.streams:
        if not position["stream"].startswith(NEMESIS_STREAM_PREFIX):
            found.extend(_stream_position(position))
    if h.snapshot.gaps_escalated:
        found.append(f"{h.snapshot.gaps_escalated} gaps escalated (the reconciler gave up on them)")
    return found


def _stream_produced_and_applied(
    h: History, task: str, stream: str, ids_of_seq: Mapping[int, tuple[str, ...]]
) -> list[str]:
    """Holes and doubles in the stream's outbox seqs; seqs of 1..k never applied, or beyond k."""
    found = []
    k = max(ids_of_seq)
    made_of_seq = _made_of_seq((seq, ids[0]) for seq, ids in ids_of_seq.items())
    holes = seq_holes_not_past_retention(
        made_of_seq,
        k=k,
        cutoff=h.snapshot.retention_cutoffs.get("outbox"),
        known_made_at={},
        start_past=h.past_outbox > 0,
    )
    doubles = [seq for seq, ids in ids_of_seq.items() if len(ids) > 1]
    if holes or doubles:
        found.append(f"outbox stream {stream}: holes {_seq_runs(holes)}, doubles {doubles[:5]}")
    applied = h.consumed.get((task, stream), {})
    missing = seq_holes_not_past_retention(
        _made_of_seq(applied.items()),
        k=k,
        cutoff=h.snapshot.retention_cutoffs.get("message_log"),
        known_made_at={seq: made for seq, made in made_of_seq.items() if made is not None},
        start_past=h.past_log > 0,
    )
    if missing:
        found.append(f"stream {stream}: seqs {_seq_runs(missing)} of 1..{k} never applied by {task}")
    extra = [seq for seq in applied if seq > k]
    if extra:
        found.append(f"stream {stream}: {task} applied seqs {_seq_runs(extra)} beyond the produced {k}")
    return found


def _stream_position(position: Mapping[str, Any]) -> list[str]:
    """The consumer's own view of a stream (``stream_positions()``): all of it applied, no gap open."""
    found = []
    name, high = position["stream"], position.get("produced_seq")
    if high is None or (position["consumed_watermark"], position["max_seen"]) != (high, high):
        found.append(
            f"stream {name}: produced {high}, watermark {position['consumed_watermark']}, "
            f"max seen {position['max_seen']}"
        )
    if position.get("gaps_open"):
        found.append(f"stream {name}: {position['gaps_open']} gaps still open")
    return found


def _made_of_seq(ids: Iterable[tuple[int, str]]) -> dict[int, float | None]:
    """Seq -> when its message was made (its UUIDv7's time; None: not a UUIDv7)."""
    return {seq: message_made_at(message_id, None) for seq, message_id in ids}


def _seq_runs(seqs: Iterable[int]) -> str:
    """Return ``[3, 4, 5, 9]`` as ``3-5, 9`` (at most a few runs)."""
    runs: list[list[int]] = []
    for seq in sorted(seqs):
        if runs and seq == runs[-1][1] + 1:
            runs[-1][1] = seq
        else:
            runs.append([seq, seq])
    text = [f"{start}-{end}" if start != end else f"{start}" for start, end in runs]
    return ", ".join(text[:5]) + (" ..." if len(text) > 5 else "")


def invariant_i7_accounts_applied_in_order(h: History) -> list[str]:
    """I7: each account's deductions were applied in the order its trades were placed; none is
    left parked."""
    found = []
    for account, entries in sorted(h.ledger_of_account.items(), key=lambda item: item[0]):
        seqs = [h.deduct_outbox[e.message_id].seq for e in entries if e.message_id in h.deduct_outbox]
        late = next(((before, after) for before, after in itertools.pairwise(seqs) if after <= before), None)
        if late is not None:
            found.append(f"account {account}: seq {late[1]} applied after seq {late[0]}")
    if h.snapshot.parked:
        found.append(f"{h.snapshot.parked} messages still parked, waiting for a predecessor")
    return found
