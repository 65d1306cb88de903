import itertools
import sys
import time
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from beans.contracts import account_ids as all_account_ids
from trades import services
from trades.exceptions import TradeError


def progress_bar(done: int, total: int, started: float, width: int = 40) -> str:
    filled = width * done // total
    rate = done / max(time.monotonic() - started, 1e-9)
    return f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} trades ({rate:,.0f}/s)"


class Command(BaseCommand):
    help = "Place trades through the same service as the API, spread over existing accounts."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--count", type=int, required=True, help="how many trades")
        parser.add_argument("--beans", type=int, default=100, help="beans per trade")
        parser.add_argument(
            "--account", type=int, action="append", help="account id (repeatable); default all"
        )
        parser.add_argument(
            "--batch",
            type=int,
            default=1,
            help="trades per transaction (trades_place_many, like POST /api/trades/batch/); default 1",
        )
        parser.add_argument("--no-progress", action="store_true", help="do not draw the progress bar")

    def handle(
        self, *args: Any, count: int, beans: int, account: list[int] | None, batch: int, **options: Any
    ) -> None:
        account_ids = account or all_account_ids()
        if not account_ids:
            raise CommandError("no accounts: run `manage.py create_accounts` first")
        if count <= 0:
            raise CommandError("--count must be positive")
        if not 1 <= batch <= settings.TRADES_BATCH_MAX:
            raise CommandError(f"--batch must be from 1 to {settings.TRADES_BATCH_MAX} (TRADES_BATCH_MAX)")
        show = not options["no_progress"]
        started = time.monotonic()
        accounts = itertools.islice(itertools.cycle(account_ids), count)
        done = 0
        while chunk := list(itertools.islice(accounts, batch)):
            try:
                if batch == 1:
                    services.trade_place(account_id=chunk[0], beans=beans)
                else:
                    services.trades_place_many(
                        orders=[services.TradeOrder(account_id=one, beans=beans) for one in chunk]
                    )
            except TradeError as exc:
                raise CommandError(f"trades {done + 1} to {done + len(chunk)}: {exc}") from exc
            done += len(chunk)
            if show and (done % 10 < len(chunk) or done == count):
                sys.stderr.write(progress_bar(done, count, started))
                sys.stderr.flush()
        if show:
            sys.stderr.write("\n")
        elapsed = time.monotonic() - started
        self.stdout.write(f"placed {count} trades of {beans} beans in {elapsed:.1f}s")
