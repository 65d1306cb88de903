"""The verdict: every invariant checked on one ``History``, the pipeline's own ``verify`` as a second
opinion, and the run's counts."""

import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from chaos.checker.history import History, history_build
from chaos.checker.messages import (
    invariant_i5_atomic_trade_outbox_inbox,
    invariant_i6_streams_contiguous,
    invariant_i7_accounts_applied_in_order,
)
from chaos.checker.money import (
    count_duplicated_effects,
    count_indeterminate_committed,
    count_lost,
    count_rejected_for_funds,
    invariant_i1_no_lost_trade,
    invariant_i2_no_double_effect,
    invariant_i3_no_phantom_effect,
    invariant_i4_refused_has_no_effect,
    invariant_i9_business_rules,
)
from chaos.checker.quiescence import (
    count_dead_letters_explained,
    invariant_i8_quiescent,
    invariant_i10_live_after_heal,
)
from chaos.checker.rows import Injected, Liveness, Request, Snapshot

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

# The function that checks each of INVARIANTS, in the same order.
CHECKS: dict[str, Callable[[History], list[str]]] = {
    "I1": invariant_i1_no_lost_trade,
    "I2": invariant_i2_no_double_effect,
    "I3": invariant_i3_no_phantom_effect,
    "I4": invariant_i4_refused_has_no_effect,
    "I5": invariant_i5_atomic_trade_outbox_inbox,
    "I6": invariant_i6_streams_contiguous,
    "I7": invariant_i7_accounts_applied_in_order,
    "I8": invariant_i8_quiescent,
    "I9": invariant_i9_business_rules,
    "I10": invariant_i10_live_after_heal,
}


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


def check(snapshot: Snapshot, requests: Sequence[Request], injected: Injected, liveness: Liveness) -> Verdict:
    """Verify I1-I10; return every violation, filed by invariant, and the run's counts.

    A row that retention may have removed (its message made before ``retention_cutoffs``) is not
    a violation when it is missing; what does not depend on it (the trade, the ledger, the
    balances, the consumers' watermarks) is still checked.
    """
    h = history_build(snapshot, requests, injected, liveness)
    found = {name: CHECKS[name](h) for name, _ in INVARIANTS}
    for name, violation in verify_findings(snapshot.code_violations):
        if name in found:
            found[name].append(f"verify: {violation}")
    return Verdict(violations=found, counts=verdict_counts(h))


def verify_findings(code_violations: Sequence[str]) -> Iterator[tuple[str, str]]:
    """The pipeline's own ``verify`` findings, each under every invariant it names (``I2/I5: ...``;
    none named: I5)."""
    for violation in code_violations:
        names = re.match(r"^(I\d+(?:/I\d+)*):", violation)
        for name in names.group(1).split("/") if names else ["I5"]:
            yield name, violation


def verdict_counts(h: History) -> dict[str, int]:
    """What the run did, by outcome of request, trade, message and dead letter."""
    outcomes = Counter(request.outcome for request in h.requests)
    dead_letters = count_dead_letters_explained(h)
    streams = h.snapshot.streams
    return {
        "attempted": sum(n for outcome, n in outcomes.items() if outcome != "not_attempted"),
        "ok": outcomes["ok"],
        "refused": outcomes["refused"],
        "unavailable": outcomes["unavailable"],
        "failed": outcomes["refused"] + outcomes["unavailable"],
        "indeterminate": outcomes["indeterminate"],
        "indeterminate_committed": count_indeterminate_committed(h),
        "not_attempted": outcomes["not_attempted"],
        "retried": sum(1 for request in h.requests if request.attempts > 1),
        "lost": count_lost(h),
        "duplicated_deliveries": sum(row.redeliveries for row in h.snapshot.message_log),
        "duplicated_publishes_injected": h.injected.duplicates_published,
        "duplicated_effects": count_duplicated_effects(h),
        "trades": len(h.snapshot.trades),
        "deducted": sum(1 for trade in h.snapshot.trades if h.effects(trade)),
        "rejected_for_funds": count_rejected_for_funds(h),
        "dead_letters": len(h.snapshot.dead_letters),
        "dead_letters_explained": dead_letters["injected"],
        "dead_letters_expired_periodic": dead_letters["expired_periodic"],
        "poison_injected": len(h.injected.poison),
        "messages_removed": len(h.injected.removed),
        "gaps_found": sum(int(p.get("gaps_found") or 0) for p in streams),
        "gaps_healed": sum(int(p.get("gaps_healed") or 0) for p in streams),
        "past_outbox_retention": h.past_outbox,
        "past_message_log_retention": h.past_log,
    }
