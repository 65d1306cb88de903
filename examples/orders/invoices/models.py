from django.db import models


class Invoice(models.Model):
    # The order's id, not a foreign key: the invoice side knows orders only from their messages
    # (it could keep its tables in a database of its own).
    order_id = models.BigIntegerField()
    customer_id = models.PositiveIntegerField()
    amount = models.DecimalField(max_digits=12, decimal_places=2)
    message_id = models.UUIDField()
    issued_at = models.DateTimeField(auto_now_add=True)

    objects: models.Manager["Invoice"] = models.Manager()  # spelled out for type checkers

    class Meta:
        constraints = [
            # The backstop: were a message ever applied twice, the second insert would fail.
            models.UniqueConstraint(fields=["order_id"], name="invoice_one_per_order"),
        ]

    def __str__(self) -> str:
        return f"invoice of order {self.order_id} ({self.amount})"
