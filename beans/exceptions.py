from reliability import PoisonMessage


class BeansError(Exception):
    """Base class of the bean service's errors."""


class AccountNotFound(BeansError, PoisonMessage):
    """No such account. A deduction for it is dead-lettered; replay it once the account exists."""


class InvalidAmount(BeansError):
    pass


class InvalidDeduction(BeansError, PoisonMessage):
    """A deduction message whose payload is not what the contract says."""
