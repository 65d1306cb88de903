"""The message contract between the two services: which task consumes what, on which queue.

Both sides name the same tasks; keeping the names here, outside either app, means a
rename cannot leave one side publishing to a task the other no longer has.
"""

# Trades → beans: deduct beans from an account (``beans.tasks.deduct``).
DEDUCT_TASK = "beans.deduct"
# Beans → trades: the outcome of a deduction (``trades.tasks.record_outcome``).
OUTCOME_TASK = "trades.record_outcome"
OUTCOME_QUEUE = "trades"
