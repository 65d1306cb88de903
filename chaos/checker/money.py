"""The invariants on money: what the clients were told against the trades and the ledger (I1-I4, I9).

Each ``invariant_*`` takes the run's ``History`` and returns its violations, in a stable order;
the ``count_*`` next to it give the verdict's counts that the same rule decides.
"""

from beans.contracts import DEDUCT_TASK
from chaos.checker.history import History, Replayed
from chaos.checker.rows import LedgerRow, TradeRow

REFUSED = frozenset({"refused", "unavailable", "not_attempted"})  # outcomes that promise no effect


def invariant_i1_no_lost_trade(h: History) -> list[str]:
    """I1: every accepted request has its trade; every trade has its effect or was rejected."""
    found = []
    for request in h.requests:
        if request.outcome != "ok":
            continue
        matches = h.trades_by_key.get(request.key, ())
        if not matches:
            found.append(f"request {request.key} was accepted but no trade has its Idempotency-Key")
        elif (matches[0].account, matches[0].beans) != (request.account, request.beans):
            found.append(
                f"request {request.key} asked {request.beans} beans from {request.account}, its trade "
                f"{matches[0].id} has {matches[0].beans} from {matches[0].account}"
            )
    found.extend(problem for trade in h.snapshot.trades if (problem := _trade_lost(h, trade)))
    return found


def count_lost(h: History) -> int:
    """Accepted requests without a trade, and trades without their effect (I1)."""
    requests = {r.key for r in h.requests if r.outcome == "ok" and not h.trades_by_key.get(r.key)}
    trades = {trade.id for trade in h.snapshot.trades if _trade_lost(h, trade)}
    return len(requests) + len(trades)


def _trade_lost(h: History, trade: TradeRow) -> str | None:
    """Why the trade's deduction is lost (None: it is not)."""
    applied = h.effects(trade)
    if trade.status == "pending":
        return f"trade {trade.id} still pending ({applied} deductions) after drain"
    if applied == 0 and trade.status != "rejected":
        return f"trade {trade.id} is {trade.status} but has no ledger deduction"
    return None


def invariant_i2_no_double_effect(h: History) -> list[str]:
    """I2: at most one effect per message; every balance is its opening balance minus its ledger."""
    found = [
        f"message {message_id} deducted {len(entries)} times (ledger {[e.id for e in entries]})"
        for message_id, entries in h.ledger_by_message.items()
        if len(entries) > 1
    ]
    for account, initial in sorted(h.snapshot.initial_balances.items()):
        entries = h.ledger_of_account.get(account, ())
        expected = initial - sum(entry.beans for entry in entries)
        actual = h.snapshot.balances.get(account)
        if actual != expected:
            found.append(
                f"account {account}: balance {actual} != opening {initial} - deductions "
                f"{initial - expected} = {expected}"
            )
        found.extend(_balance_after_wrong(account, initial, entries))
    return found


def count_duplicated_effects(h: History) -> int:
    """Ledger deductions beyond a message's first (I2)."""
    return sum(len(entries) - 1 for entries in h.ledger_by_message.values())


def _balance_after_wrong(account: int, initial: int, entries: tuple[LedgerRow, ...]) -> list[str]:
    """The account's first ledger entry whose ``balance_after`` its predecessors do not make."""
    running = initial
    for entry in entries:
        running -= entry.beans
        if entry.balance_after != running:
            return [
                f"ledger entry {entry.id} of account {account} says balance_after "
                f"{entry.balance_after}, the entries before it make {running}"
            ]
    return []


def invariant_i3_no_phantom_effect(h: History) -> list[str]:
    """I3: every effect comes from a produced message of a trade a client asked for."""
    found = []
    for message_id, entries in h.ledger_by_message.items():
        source = h.trade_by_message.get(message_id)
        if source is None:
            found.append(f"ledger deduction(s) {[e.id for e in entries]} from message {message_id}: no trade")
        elif any(
            (e.account, e.beans, e.trade_id) != (source.account, source.beans, source.id) for e in entries
        ):
            found.append(f"ledger deduction from message {message_id} does not match trade {source.id}")
        if message_id not in h.deduct_outbox and not h.past("outbox", message_id):
            found.append(f"ledger deduction from message {message_id}: no outbox message produced it")
        if message_id in h.injected.poison:
            found.append(f"injected {h.injected.poison[message_id]} message {message_id} deducted beans")
    for message_id, kind in h.injected.poison.items():
        inbox = h.log.get((DEDUCT_TASK, message_id))
        if inbox is not None and inbox.outcome not in {"", "dead-lettered"}:
            found.append(f"injected {kind} message {message_id} was applied ({inbox.outcome})")
    found.extend(
        f"trade {trade.id} has Idempotency-Key {trade.key!r}, which no client sent"
        for trade in h.snapshot.trades
        if trade.key is None or trade.key not in h.requested_keys
    )
    return found


def invariant_i4_refused_has_no_effect(h: History) -> list[str]:
    """I4: a refused request has no effect; an indeterminate one has 0 or 1."""
    found = []
    for request in h.requests:
        matches = h.trades_by_key.get(request.key, ())
        if request.outcome in REFUSED and matches:
            found.append(f"request {request.key} was {request.outcome}, yet trade {matches[0].id} exists")
        elif request.outcome == "indeterminate" and _more_than_one_effect(h, matches):
            found.append(f"indeterminate request {request.key} had more than one effect")
    return found


def count_indeterminate_committed(h: History) -> int:
    """Indeterminate requests whose trade exists (I4)."""
    return sum(bool(h.trades_by_key.get(r.key)) for r in h.requests if r.outcome == "indeterminate")


def _more_than_one_effect(h: History, matches: tuple[TradeRow, ...]) -> bool:
    return len(matches) > 1 or any(h.effects(trade) > 1 for trade in matches)


def invariant_i9_business_rules(h: History) -> list[str]:
    """I9: deductions only from accounts that held enough, rejections only from those that did not,
    beans > 0, balances >= 0 (re-decided by each account's replay, from the ledger alone)."""
    found = []
    for account, replayed in h.replay.items():
        if replayed is None:
            found.append(f"trades for account {account}, which the run never opened")
            continue
        found.extend(problem for step in replayed if (problem := _misjudged(h, account, step)))
    found.extend(f"trade {t.id} has {t.beans} beans" for t in h.snapshot.trades if t.beans <= 0)
    found.extend(
        f"account {account} balance is negative ({balance})"
        for account, balance in sorted(h.snapshot.balances.items())
        if balance < 0
    )
    return found


def count_rejected_for_funds(h: History) -> int:
    """Trades rightly rejected: their account held less than they asked (I9)."""
    return len(
        {
            step.trade.id
            for replayed in h.replay.values()
            for step in replayed or ()
            if _rejected(h, step.trade) and step.held < step.trade.beans
        }
    )


def _misjudged(h: History, account: int, step: Replayed) -> str | None:
    """Why the trade's deduction or rejection contradicts what its account held (None: it does not)."""
    trade, held = step
    if h.effects(trade) and held < trade.beans:
        return f"trade {trade.id} deducted {trade.beans} beans from account {account} holding {held}"
    if _rejected(h, trade) and held >= trade.beans:
        return f"trade {trade.id} rejected although account {account} held {held} >= {trade.beans} beans"
    return None


def _rejected(h: History, trade: TradeRow) -> bool:
    """Rejected, and rightly without an effect (a rejected trade with one is judged as deducted)."""
    return not h.effects(trade) and trade.status == "rejected"
