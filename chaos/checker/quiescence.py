"""The invariants on how the run ended: quiet (I8) and live after the last heal (I10).

Each ``invariant_*`` takes the run's ``History`` and returns its violations, in a stable order;
the ``count_*`` next to it give the verdict's counts that the same rule decides.
"""

from collections import Counter
from typing import Literal

from chaos.checker.history import History
from chaos.checker.rows import DeadLetterRow

Explanation = Literal["injected", "expired_periodic"] | None


def invariant_i8_quiescent(h: History) -> list[str]:
    """I8: quiescence: no pending outbox message, empty queues, every dead letter explained, and
    every injected message dead-lettered or removed."""
    found = []
    pending = [row for row in h.snapshot.outbox if row.status == "pending"]
    if pending:
        found.append(f"{len(pending)} outbox messages still pending, e.g. {pending[0].message_id}")
    for queue, count in sorted(h.snapshot.queues.items(), key=lambda item: item[0]):
        if count is None:
            found.append(f"queue {queue}: could not be read")
        elif count:
            found.append(f"queue {queue}: {count} messages left")
    found.extend(
        f"dead letter {letter.id} ({letter.handler}, {letter.reason}, message {letter.message_id}) "
        f"is not one the nemesis injected: {letter.detail[:160]}"
        for letter in h.snapshot.dead_letters
        if _dead_letter_explanation(h, letter) is None
    )
    recorded = {i for letter in h.snapshot.dead_letters for i in _ids(letter)}
    found.extend(
        f"injected {kind} message {message_id} vanished: neither dead-lettered nor removed"
        for message_id, kind in sorted(h.injected.poison.items())
        if message_id not in recorded and message_id not in h.injected.removed
    )
    return found


def count_dead_letters_explained(h: History) -> Counter[Explanation]:
    """Dead letters by what explains them (I8): ``injected``, ``expired_periodic``, None (nothing)."""
    return Counter(_dead_letter_explanation(h, letter) for letter in h.snapshot.dead_letters)


def _dead_letter_explanation(h: History, letter: DeadLetterRow) -> Explanation:
    if _ids(letter) & h.injected.poison.keys():
        return "injected"
    if letter.handler in h.snapshot.periodic_tasks and "(expired)" in letter.detail:
        # A beat task that outlived its ``expires`` in the queue (the broker was down or the
        # workers behind): it carries no effect, and the next period runs it again.
        return "expired_periodic"
    return None


def _ids(letter: DeadLetterRow) -> set[str]:
    """The message ids a dead letter names (its row's and its envelope's)."""
    return {i for i in (letter.message_id, letter.envelope_message_id) if i is not None}


def invariant_i10_live_after_heal(h: History) -> list[str]:
    """I10: liveness: the pipeline drained, and trades placed after the last heal settled in time."""
    live = h.liveness
    found = []
    if not live.drained:
        found.append(f"the pipeline did not drain within the bound ({live.drain_s}s)")
    if live.settled_per_s_after_heal == 0:
        found.append("no trade settled at all after the last fault healed")
    if live.probe_ok == 0:
        found.append("no trade could be placed after the last fault healed")
    elif live.probe_settled < live.probe_ok:
        found.append(
            f"{live.probe_ok - live.probe_settled} of {live.probe_ok} trades placed after the "
            f"heal did not settle within {live.bound_s:.0f}s"
        )
    found.extend(live.notes)
    return found
