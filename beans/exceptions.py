class BeansError(Exception):
    """Base class of the bean service's errors."""


class AccountNotFound(BeansError):
    pass


class InvalidAmount(BeansError):
    pass


class InvalidDeduction(BeansError):
    """A deduction message whose payload is not what the contract says."""
