from reliability import PoisonMessage


class TradeError(Exception):
    """Base class of the trade service's errors."""


class TradeInvalid(TradeError):
    """The request is malformed; the message says which field and why."""


class AccountNotFound(TradeError):
    pass


class IdempotencyConflict(TradeError):
    """An Idempotency-Key was reused for a different trade."""


class InvalidOutcome(TradeError, PoisonMessage):
    """An outcome message that does not fit the trade it names."""
