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

``check`` is pure (rows in, verdict out), so it can be tested on crafted data. It builds
one ``History`` (the rows, indexed once) and runs one small function per invariant on it:

- ``rows``: what is read and recorded (``Snapshot``, ``TradeRow``..., ``Request``, ``Injected``,
  ``Liveness``);
- ``history``: the shared indexes, the accounts' replay, and what retention may have removed;
- ``money``: I1 loss, I2 double effect, I3 phantom effect, I4 refused requests, I9 business rules;
- ``messages``: I5 atomicity of trade, outbox and inbox, I6 contiguous streams, I7 order;
- ``quiescence``: I8 quiescence, I10 liveness after the last heal;
- ``verdict``: ``check``, the second opinion, the counts;
- ``collect``: ``snapshot_collect``, the SQL.
"""

from chaos.checker.collect import snapshot_collect
from chaos.checker.history import History, history_build, seq_holes_not_past_retention
from chaos.checker.messages import NEMESIS_STREAM_PREFIX
from chaos.checker.rows import (
    DeadLetterRow,
    Injected,
    LedgerRow,
    Liveness,
    LogRow,
    OutboxRow,
    Request,
    Snapshot,
    TradeRow,
)
from chaos.checker.verdict import CHECKS, EXAMPLES, INVARIANTS, Verdict, check

__all__ = [
    "CHECKS",
    "EXAMPLES",
    "INVARIANTS",
    "NEMESIS_STREAM_PREFIX",
    "DeadLetterRow",
    "History",
    "Injected",
    "LedgerRow",
    "Liveness",
    "LogRow",
    "OutboxRow",
    "Request",
    "Snapshot",
    "TradeRow",
    "Verdict",
    "check",
    "history_build",
    "seq_holes_not_past_retention",
    "snapshot_collect",
]
