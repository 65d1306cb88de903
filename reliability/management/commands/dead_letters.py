from typing import Any

from django.core.management.base import BaseCommand, CommandError

from reliability.conf import reliability_databases
from reliability.exceptions import ReliabilityError
from reliability.models import DeadLetter
from reliability.ops import dead_letters


class Command(BaseCommand):
    help = "List, replay or discard dead letters (replays keep the original message_id)."

    def add_arguments(self, parser: Any) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        listing = sub.add_parser("list", help="show dead letters")
        listing.add_argument("--status", choices=DeadLetter.Status.values, default=None)
        sub.add_parser("drain", help="move the broker's dead-letter queue into the table now")
        replay = sub.add_parser("replay", help="publish dead letters again")
        replay.add_argument("ids", nargs="+", type=int)
        discard = sub.add_parser("discard", help="give up on dead letters, keeping the reason")
        discard.add_argument("ids", nargs="+", type=int)
        discard.add_argument("--reason", required=True)
        for action in (listing, replay, discard):
            action.add_argument("--database", default=None, help="database alias (default: all / default)")

    def handle(self, *args: Any, action: str, **options: Any) -> None:
        if action == "drain":
            self.stdout.write(f"drained {dead_letters.dead_letters_drain()} dead letters")
            return
        if action == "list":
            self._list(options["status"], options["database"])
            return
        using = options["database"] or "default"
        for letter_id in options["ids"]:
            try:
                if action == "replay":
                    letter = dead_letters.dead_letter_replay(letter_id=letter_id, using=using)
                    self.stdout.write(
                        f"replayed {letter.pk} (message {letter.message_id}, {letter.replays} replays)"
                    )
                else:
                    letter = dead_letters.dead_letter_discard(
                        letter_id=letter_id, reason=options["reason"], using=using
                    )
                    self.stdout.write(f"discarded {letter.pk} (message {letter.message_id})")
            except DeadLetter.DoesNotExist as exc:
                raise CommandError(f"no dead letter {letter_id} in database {using}") from exc
            except ReliabilityError as exc:
                raise CommandError(str(exc)) from exc

    def _list(self, status: str | None, database: str | None) -> None:
        aliases = [database] if database else reliability_databases()
        line = "{:>6}  {:<9} {:<10} {:<18} {:<24} {:<36} {:>5} {:>7}  {}"
        self.stdout.write(
            line.format(
                "id", "database", "status", "reason", "handler", "message_id", "seen", "replays", "detail"
            )
        )
        for alias in aliases:
            letters = DeadLetter.objects.using(alias).order_by("id")
            if status:
                letters = letters.filter(status=status)
            for letter in letters:
                self.stdout.write(
                    line.format(
                        letter.pk,
                        alias,
                        letter.status,
                        letter.reason,
                        letter.handler[:24],
                        str(letter.message_id or "-"),
                        letter.occurrences,
                        letter.replays,
                        (letter.discard_reason or letter.detail)[:80],
                    )
                )
