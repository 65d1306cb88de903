"""The order service's one write."""

from decimal import Decimal

from django.db import transaction

from orders.models import Order
from reliability import outbox_enqueue

# A customer's orders always go to the same stream: each stream is numbered without gaps, so a
# message lost on the way is noticed (and re-published) by the reconciler.
STREAMS = 4


def order_place(customer_id: int, amount: Decimal) -> Order:
    """Place an order and, in the same transaction, the message that invoices it.

    Both commit or neither does; the library publishes the message after the commit (and keeps
    trying until the broker confirmed it).
    """
    with transaction.atomic():
        order = Order.objects.create(customer_id=customer_id, amount=amount)
        outbox_enqueue(
            task_name="invoices.issue",
            queue="invoices",
            stream=f"orders.{customer_id % STREAMS}",
            payload={"order_id": order.pk, "customer_id": customer_id, "amount": str(amount)},
        )
    return order
