"""The consumer: one invoice per order message, exactly once."""

from decimal import Decimal, InvalidOperation

from invoices.models import Invoice
from reliability import Message, PoisonMessage, exactly_once_task


@exactly_once_task(name="invoices.issue", queue="invoices")
def invoice_issue(message: Message) -> str:
    """Issue the invoice of one order.

    Runs once per message, inside the transaction that records the message as applied: the
    invoice and that record commit together, and a redelivered copy is skipped.
    """
    payload = message.payload
    try:
        order_id, customer_id = int(payload["order_id"]), int(payload["customer_id"])
        amount = Decimal(payload["amount"])
    except (KeyError, TypeError, ValueError, InvalidOperation) as exc:
        # It would fail the same way on every delivery: dead-letter it now.
        raise PoisonMessage(f"not an order message: {payload!r}") from exc
    Invoice.objects.create(
        order_id=order_id, customer_id=customer_id, amount=amount, message_id=message.message_id
    )
    return "issued"
