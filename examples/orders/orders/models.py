from django.db import models


class Order(models.Model):
    customer_id = models.PositiveIntegerField()
    amount = models.DecimalField(max_digits=12, decimal_places=2)
    placed_at = models.DateTimeField(auto_now_add=True)

    objects: models.Manager["Order"] = models.Manager()  # spelled out for type checkers

    def __str__(self) -> str:
        return f"order {self.pk} of customer {self.customer_id} ({self.amount})"
