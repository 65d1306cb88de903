"""The trade service's consumer of outcomes: a thin exactly-once task."""

from beans.contracts import OUTCOME_QUEUE, OUTCOME_TASK
from reliability import Message, exactly_once_task

from . import services


@exactly_once_task(name=OUTCOME_TASK, queue=OUTCOME_QUEUE, batch_handler=services.trades_record_outcomes)
def record_outcome(message: Message) -> str:
    """Settle a trade from the bean service's outcome message, exactly once."""
    return services.trade_record_outcome(message)
