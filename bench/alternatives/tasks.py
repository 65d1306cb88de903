"""The deduction task, one function registered on each alternative's app (its own queue)."""

from . import best_practice, outbox
from .consume import deduction_apply

DEDUCT_TASK = "bench.alternatives.deduct"


def deduct(trade_id: int, account_id: int, beans: int) -> None:
    """Deduct a trade's beans (``consume.deduction_apply``)."""
    deduction_apply(trade_id=trade_id, account_id=account_id, beans=beans)


# shared=False: registered on these apps only, not on every app of the process (the project's).
deduct_best_practice = best_practice.app.task(name=DEDUCT_TASK, shared=False, ignore_result=True)(deduct)
deduct_outbox = outbox.app.task(name=DEDUCT_TASK, shared=False, ignore_result=True)(deduct)
