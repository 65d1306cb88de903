"""manage.py api_keys create|list|revoke: the keys API clients authenticate with."""

from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from edge.exceptions import ApiKeyError
from edge.models import ApiKey
from edge.selectors import api_keys_list
from edge.services import api_key_create, api_key_revoke


class Command(BaseCommand):
    help = (
        "Create, list and revoke API keys. `create NAME --scopes trades:write` prints the new key "
        "as its last line: it is stored only as a digest and cannot be shown again."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True, metavar="{create,list,revoke}")
        create = actions.add_parser("create", help="create a key and print it (its last line)")
        create.add_argument("name", help="who uses the key, e.g. the client application")
        create.add_argument(
            "--scopes",
            nargs="+",
            required=True,
            metavar="SCOPE",
            help=f"what the key may call, space- or comma-separated: {', '.join(ApiKey.Scope.values)}",
        )
        create.add_argument(
            "--rate-limit",
            type=int,
            default=0,
            metavar="PER_S",
            help="requests a second (default: the project's API_RATE_LIMIT_PER_S)",
        )
        actions.add_parser("list", help="every key: name, prefix, scopes, created, revoked")
        revoke = actions.add_parser("revoke", help="refuse a key's requests from now on")
        revoke.add_argument("name", help="the key's name, or its prefix (the 12 characters after bk_)")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            getattr(self, f"_{options['action']}")(options)
        except ApiKeyError as exc:
            raise CommandError(str(exc)) from exc

    def _create(self, options: dict[str, Any]) -> None:
        scopes = [scope for value in options["scopes"] for scope in value.split(",")]
        api_key, key = api_key_create(
            name=options["name"], scopes=scopes, rate_limit_per_s=options["rate_limit"]
        )
        self.stderr.write(
            f"Created {api_key}. Keep the key below: it is not stored and cannot be shown again."
        )
        self.stdout.write(key)

    def _list(self, options: dict[str, Any]) -> None:
        self.stdout.write(f"{'name':<24} {'prefix':<14} {'scopes':<40} {'rate/s':>7}  created / revoked")
        for api_key in api_keys_list():
            state = f"revoked {api_key.revoked_at:%Y-%m-%d %H:%M}" if api_key.revoked_at else "live"
            self.stdout.write(
                f"{api_key.name:<24} {api_key.prefix:<14} {','.join(api_key.scopes):<40} "
                f"{api_key.rate_limit_per_s or 'default':>7}  {api_key.created_at:%Y-%m-%d %H:%M}, {state}"
            )

    def _revoke(self, options: dict[str, Any]) -> None:
        api_key = api_key_revoke(name_or_prefix=options["name"])
        self.stdout.write(
            f"Revoked {api_key.name} (bk_{api_key.prefix}_…): its requests are refused from now on."
        )
