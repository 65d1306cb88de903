from typing import Any

from django.core.management.base import BaseCommand, CommandError

from beans import services
from beans.exceptions import InvalidAmount


class Command(BaseCommand):
    help = "Create demo/test bean accounts, each with an opening balance."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--count", type=int, required=True, help="how many accounts")
        parser.add_argument("--balance", type=int, default=0, help="opening balance of each account")
        parser.add_argument("--owner-prefix", default="demo", help="owner names are PREFIX-0001, ...")

    def handle(self, *args: Any, count: int, balance: int, owner_prefix: str, **options: Any) -> None:
        if count <= 0:
            raise CommandError("--count must be positive")
        try:
            accounts = [
                services.account_create(owner=f"{owner_prefix}-{n:04d}", balance=balance)
                for n in range(1, count + 1)
            ]
        except InvalidAmount as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            f"created {len(accounts)} accounts (ids {accounts[0].pk}..{accounts[-1].pk}) with {balance} beans each"
        )
