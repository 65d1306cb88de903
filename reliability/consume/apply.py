"""Apply: call the handler inside the effect's transaction and log its outcome."""

from collections.abc import Callable

from reliability.consume import message_log
from reliability.envelope import Message
from reliability.faults import fault_point
from reliability.models import Outcome

Handler = Callable[[Message], str | None]
# Applies several messages inside the caller's transaction, in the order given (set-based
# SQL rather than a round trip per message); returns one outcome per message.
BatchHandler = Callable[[list[Message]], list[str]]


def message_apply(*, handler_name: str, handler: Handler, message: Message, using: str) -> str:
    """Call ``handler`` in the caller's transaction and record its outcome in the message log."""
    fault_point("consume.before_handler", message_id=message.message_id)
    outcome = handler(message) or Outcome.APPLIED
    fault_point("consume.after_handler", message_id=message.message_id)  # its locks are held here
    message_log.message_log_record_outcome(
        handler=handler_name, message_id=message.message_id, outcome=outcome, using=using
    )
    return outcome
