"""One run as the invariants see it: its rows and records, indexed once (``history_build``).

Every invariant reads the same ``History``, so none rebuilds another's index. Retention is
decided here too: a row of a message made before its table's cutoff may be gone, and is not
a violation when it is missing.
"""

import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

from beans.contracts import DEDUCT_TASK, OUTCOME_TASK
from chaos.checker.rows import Injected, LedgerRow, Liveness, LogRow, OutboxRow, Request, Snapshot, TradeRow

K = TypeVar("K")
V = TypeVar("V")


class Replayed(NamedTuple):
    """One trade of an account's replay, and what the account held when its turn came."""

    trade: TradeRow
    held: int


@dataclass(frozen=True)
class History:
    """A run's snapshot, requests, injections and liveness, with the indexes the invariants share."""

    snapshot: Snapshot
    requests: Sequence[Request]
    injected: Injected
    liveness: Liveness
    trades_by_key: Mapping[str, tuple[TradeRow, ...]]
    trade_by_message: Mapping[str, TradeRow]
    made_at_of: Mapping[str, float | None]  # a trade's deduction message -> when the trade was made
    requested_keys: frozenset[str]
    ledger_by_message: Mapping[str, tuple[LedgerRow, ...]]  # in ledger order
    ledger_of_account: Mapping[int, tuple[LedgerRow, ...]]  # each account's entries by id
    deduct_outbox: Mapping[str, OutboxRow]  # deduction messages by message id
    outcomes_of: Mapping[str, tuple[OutboxRow, ...]]  # outcome messages by the deduction they report on
    log: Mapping[tuple[str, str], LogRow]  # (handler, message id) -> inbox row
    produced: Mapping[tuple[str, str], Mapping[int, tuple[str, ...]]]  # (task, stream) -> seq -> message ids
    consumed: Mapping[tuple[str, str], Mapping[int, str]]  # (handler, stream) -> seq -> message id
    # Each account's trades in the order its stream placed them (None: the run never opened it).
    replay: Mapping[int, tuple[Replayed, ...] | None]
    past_outbox: int  # trades whose deduction message retention may have removed from the outbox
    past_log: int  # ... from the message log

    def effects(self, trade: TradeRow) -> int:
        """How many ledger deductions the trade's message made."""
        return len(self.ledger_by_message.get(trade.message_id, ()))

    def past(self, table: str, message_id: str) -> bool:
        """Whether retention may have removed ``table``'s row of the message."""
        return _past(self.snapshot.retention_cutoffs, self.made_at_of, table, message_id)


def history_build(
    snapshot: Snapshot, requests: Sequence[Request], injected: Injected, liveness: Liveness
) -> History:
    """Index the run once for every invariant."""
    s = snapshot
    made_at_of = {trade.message_id: trade.made_at for trade in s.trades}
    ledger_by_message = _grouped((entry.message_id, entry) for entry in s.ledger)
    deduct_outbox = {row.message_id: row for row in s.outbox if row.task_name == DEDUCT_TASK}
    return History(
        snapshot=s,
        requests=requests,
        injected=injected,
        liveness=liveness,
        trades_by_key=_grouped((trade.key, trade) for trade in s.trades if trade.key is not None),
        trade_by_message={trade.message_id: trade for trade in s.trades},
        made_at_of=made_at_of,
        requested_keys=frozenset(request.key for request in requests),
        ledger_by_message=ledger_by_message,
        ledger_of_account={
            account: tuple(sorted(entries, key=lambda e: e.id))
            for account, entries in _grouped((entry.account, entry) for entry in s.ledger).items()
        },
        deduct_outbox=deduct_outbox,
        outcomes_of=_grouped(
            (row.deduction_message_id, row)
            for row in s.outbox
            if row.task_name == OUTCOME_TASK and row.deduction_message_id
        ),
        log={(row.handler, row.message_id): row for row in s.message_log},
        produced={
            stream: _grouped(ids_of_seq)
            for stream, ids_of_seq in _grouped(
                ((row.task_name, row.stream), (row.seq, row.message_id)) for row in s.outbox
            ).items()
        },
        consumed={
            stream: dict(ids_of_seq)
            for stream, ids_of_seq in _grouped(
                ((row.handler, row.stream), (row.seq, row.message_id)) for row in s.message_log
            ).items()
        },
        replay=_replay(s, deduct_outbox, ledger_by_message),
        past_outbox=sum(_past(s.retention_cutoffs, made_at_of, "outbox", t.message_id) for t in s.trades),
        past_log=sum(_past(s.retention_cutoffs, made_at_of, "message_log", t.message_id) for t in s.trades),
    )


def _grouped(pairs: Iterable[tuple[K, V]]) -> dict[K, tuple[V, ...]]:
    """``(key, value)`` pairs as key -> its values, keys and values in the order they came."""
    groups: dict[K, list[V]] = defaultdict(list)
    for key, value in pairs:
        groups[key].append(value)
    return {key: tuple(values) for key, values in groups.items()}


def _replay(
    s: Snapshot,
    deduct_outbox: Mapping[str, OutboxRow],
    ledger_by_message: Mapping[str, tuple[LedgerRow, ...]],
) -> dict[int, tuple[Replayed, ...] | None]:
    """Each account's trades in its stream's order, each with what the account held before it.

    The ledger alone decides what was held (not the trades' statuses), so a rejection for
    insufficient funds can be told from a lost deduction.
    """
    replay: dict[int, tuple[Replayed, ...] | None] = {}
    for account, trades in _grouped((trade.account, trade) for trade in s.trades).items():
        if account not in s.initial_balances:
            replay[account] = None
            continue
        running, steps = s.initial_balances[account], []
        for trade in sorted(trades, key=lambda t: (_seq_or_0(deduct_outbox, t.message_id), t.id)):
            steps.append(Replayed(trade, running))
            running -= trade.beans * len(ledger_by_message.get(trade.message_id, ()))
        replay[account] = tuple(steps)
    return replay


def _seq_or_0(deduct_outbox: Mapping[str, OutboxRow], message_id: str) -> int:
    row = deduct_outbox.get(message_id)
    return row.seq if row is not None else 0


def _past(
    cutoffs: Mapping[str, float], made_at_of: Mapping[str, float | None], table: str, message_id: str
) -> bool:
    cutoff = cutoffs.get(table)
    made = message_made_at(message_id, made_at_of.get(message_id))
    return cutoff is not None and made is not None and made < cutoff


def message_made_at(message_id: str, otherwise: float | None) -> float | None:
    """Epoch seconds a message was made, as retention dates it: the time in a UUIDv7, else ``otherwise``."""
    try:
        value = uuid.UUID(message_id)
    except ValueError:
        return otherwise
    return (value.int >> 80) / 1000 if value.version == 7 else otherwise


def seq_holes_not_past_retention(
    made_of_seq: Mapping[int, float | None],
    *,
    k: int,
    cutoff: float | None,
    known_made_at: Mapping[int, float],
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
        elif cutoff is None or not _hole_past(
            cutoff, known_made_at.get(seq), below=below, at_start=at_start and start_past
        ):
            holes.append(seq)
    return holes


def _hole_past(cutoff: float, known: float | None, *, below: float | None, at_start: bool) -> bool:
    """Whether a missing seq is past retention (see ``seq_holes_not_past_retention``)."""
    if known is not None:
        return known < cutoff
    return at_start or (below is not None and below < cutoff)
