"""The bean service's consumer: a thin exactly-once task over ``deduction_apply``."""

from django.conf import settings

from reliability import Message, exactly_once_task

from . import services
from .contracts import DEDUCT_TASK


# Ordered: one account's deductions are applied in the order the trades were placed (I7).
# A batch envelope is applied set-based, in one transaction (services.deductions_apply).
@exactly_once_task(
    name=DEDUCT_TASK,
    queue="beans",
    using=settings.BEANS_DATABASE,
    ordered=True,
    batch_handler=services.deductions_apply,
)
def deduct(message: Message) -> str:
    """Deduct a trade's beans from the buyer's account, exactly once."""
    return services.deduction_apply(message)
