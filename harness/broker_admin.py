"""Broker administration: vhosts, users, permissions, policies, queue and binding listings.

Through RabbitMQ's management HTTP API (the ``rabbitmq_management`` plugin, which
``scripts/ensure-services`` enables when it runs as root), as a broker user: no root needed.
Through ``rabbitmqctl`` only when the API cannot be reached at all; Debian's ``rabbitmqctl``
runs for root and the ``rabbitmq`` user only. ``broker_admin()`` picks one, once per process.

The API is ``RABBITMQ_MANAGEMENT_URL`` (default ``http://127.0.0.1:15672``); its user and
password are the URL's, else those of ``CELERY_BROKER_URL``, else guest/guest. Passwords never
reach a command line (``rabbitmqctl`` reads them on standard input) and never appear in an
error message.

Standard library only and no Django: the bench, the scripts and the test runner use it before
(or without) settings. A small command line for shell scripts (``scripts/rabbitmq-users``)::

    python -m harness.broker_admin vhosts | users | permissions VHOST
    python -m harness.broker_admin vhost-add NAME | vhost-delete NAME | user-delete NAME
    python -m harness.broker_admin user-ensure NAME [--tag TAG]...   # the password on stdin
    python -m harness.broker_admin permissions-set VHOST USER CONFIGURE WRITE READ
    python -m harness.broker_admin permissions-clear VHOST USER
"""

from __future__ import annotations

import abc
import argparse
import base64
import functools
import json
import logging
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any, NamedTuple, TypedDict
from urllib.parse import quote, unquote, urlsplit, urlunsplit

logger = logging.getLogger(__name__)

DEFAULT_MANAGEMENT_URL = "http://127.0.0.1:15672"
HTTP_TIMEOUT_S = 10.0
# Deleting a vhost stops the Raft cluster of each of its quorum queues: seconds, not milliseconds.
VHOST_DELETE_TIMEOUT_S = 60.0
RABBITMQCTL_TIMEOUT_S = 120.0
ENABLE_HINT = "run scripts/ensure-services as root once to enable the rabbitmq_management plugin"


class BrokerAdminError(RuntimeError):
    """A broker administration request failed; the message says what, where and why."""


class BrokerUnreachableError(BrokerAdminError):
    """Nothing answered at the management API's address."""


class Permission(NamedTuple):
    user: str
    configure: str
    write: str
    read: str


class User(NamedTuple):
    name: str
    tags: tuple[str, ...]


class Policy(NamedTuple):
    name: str
    pattern: str
    apply_to: str
    definition: dict[str, Any]


class Binding(NamedTuple):
    source: str
    destination: str
    destination_type: str
    routing_key: str


class Queue(TypedDict):
    """A queue as the broker lists it. Counts are ``None`` until the broker has reported them.

    The management API's counts and policy come from statistics collected every few seconds; a
    passive ``queue_declare`` asks the queue itself.
    """

    name: str
    type: str
    policy: str  # "" when no policy applies
    messages: int | None
    messages_ready: int | None
    messages_unacknowledged: int | None
    consumers: int | None


def _tags(value: Any) -> tuple[str, ...]:
    """Tags as RabbitMQ reports them: a list (3.9 and later) or one comma-separated string."""
    if isinstance(value, str):
        return tuple(tag for tag in value.split(",") if tag)
    return tuple(str(tag) for tag in value or ())


def _count(value: Any) -> int | None:
    return None if value is None or value == "" else int(value)


def _queue(row: dict[str, Any]) -> Queue:
    return Queue(
        name=row["name"],
        type=str(row.get("type") or ""),
        policy=str(row.get("policy") or ""),
        messages=_count(row.get("messages")),
        messages_ready=_count(row.get("messages_ready")),
        messages_unacknowledged=_count(row.get("messages_unacknowledged")),
        consumers=_count(row.get("consumers")),
    )


def _password_check(password: str) -> None:
    if not password or "\n" in password or "\r" in password:
        raise ValueError("a broker password must be non-empty and on one line")


def _scrub(text: str, secrets: Sequence[str]) -> str:
    """``text`` (what a server or a command answered) with every secret in it masked."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


class BrokerAdmin(abc.ABC):
    """What the project administers on the broker; every method is idempotent."""

    where: str  # for messages: "the management API at http://...", "rabbitmqctl"

    @abc.abstractmethod
    def vhosts(self) -> list[str]: ...

    @abc.abstractmethod
    def vhost_add(self, name: str) -> None:
        """Create the vhost (nothing happens if it exists); it grants nobody any permission."""

    @abc.abstractmethod
    def vhost_delete(self, name: str) -> None:
        """Delete the vhost with everything in it (nothing happens if there is none)."""

    @abc.abstractmethod
    def permissions(self, vhost: str) -> list[Permission]: ...

    @abc.abstractmethod
    def permissions_set(self, vhost: str, user: str, configure: str, write: str, read: str) -> None: ...

    @abc.abstractmethod
    def permissions_clear(self, vhost: str, user: str) -> None:
        """Take every permission of ``user`` in ``vhost`` (nothing happens if it had none)."""

    @abc.abstractmethod
    def users(self) -> list[User]: ...

    @abc.abstractmethod
    def user_ensure(self, name: str, password: str, tags: Sequence[str] = ()) -> None:
        """Create the user, or set its password; its tags become exactly ``tags``."""

    @abc.abstractmethod
    def user_delete(self, name: str) -> None:
        """Delete the user (nothing happens if there is none)."""

    @abc.abstractmethod
    def policies(self, vhost: str) -> list[Policy]: ...

    @abc.abstractmethod
    def policy_set(
        self, vhost: str, name: str, pattern: str, definition: dict[str, Any], apply_to: str = "queues"
    ) -> None: ...

    @abc.abstractmethod
    def policy_clear(self, vhost: str, name: str) -> None:
        """Remove the policy (nothing happens if there is none)."""

    @abc.abstractmethod
    def queues(self, vhost: str) -> list[Queue]: ...

    @abc.abstractmethod
    def bindings(self, vhost: str) -> list[Binding]: ...


def _credentials(management_url: str, broker_url: str) -> tuple[str, str]:
    """User and password: the management URL's, else the broker URL's, else guest/guest."""
    for url in (management_url, broker_url.split(";")[0]):
        parts = urlsplit(url)
        if parts.username:
            return unquote(parts.username), unquote(parts.password or "")
    return "guest", "guest"


class HttpBrokerAdmin(BrokerAdmin):
    """The management HTTP API (``/api/...``), as a user tagged ``administrator``."""

    def __init__(self, url: str, user: str, password: str, *, timeout: float = HTTP_TIMEOUT_S) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"the management API's URL must be http:// or https://, not {parts.scheme}://")
        netloc = parts.hostname or "127.0.0.1"
        if ":" in netloc:
            netloc = f"[{netloc}]"
        if parts.port:
            netloc = f"{netloc}:{parts.port}"
        # Without the userinfo: this is what messages show.
        self.url = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        self.where = f"the management API at {self.url}"
        self.user = user
        self._password = password
        self.timeout = timeout
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        self._authorization = f"Basic {token}"
        # The API is on the broker's own network, which the workers reach directly too: an
        # http_proxy meant for the internet must not carry broker credentials.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @classmethod
    def from_environment(cls) -> HttpBrokerAdmin:
        url = os.environ.get("RABBITMQ_MANAGEMENT_URL") or DEFAULT_MANAGEMENT_URL
        user, password = _credentials(url, os.environ.get("CELERY_BROKER_URL", ""))
        return cls(url, user, password)

    def __repr__(self) -> str:
        return f"HttpBrokerAdmin({self.url!r}, user={self.user!r})"

    def _request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        absent_ok: bool = False,
        timeout: float | None = None,
        secrets: Sequence[str] = (),
    ) -> Any:
        """Send one request to ``/api/<path>``; its JSON answer (``None`` for none, or absent)."""
        return self._send(method, path, body, absent_ok=absent_ok, timeout=timeout, secrets=secrets)[1]

    def _send(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        absent_ok: bool = False,
        timeout: float | None = None,
        secrets: Sequence[str] = (),
    ) -> tuple[int, Any]:
        """Send one request to ``/api/<path>``; the HTTP status and the JSON answer."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(  # noqa: S310 - http(s) only, checked in __init__
            f"{self.url}/api/{path}", data=data, method=method
        )
        request.add_header("Authorization", self._authorization)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        what = f"{method} /api/{path} on {self.where} as user {self.user!r}"
        try:
            with self._opener.open(request, timeout=timeout or self.timeout) as response:
                status, answer = response.status, response.read()
        except urllib.error.HTTPError as exc:
            if absent_ok and exc.code == 404:
                return exc.code, None
            detail = exc.read().decode(errors="replace")[:500].strip()
            detail = _scrub(detail, [self._password, *secrets])
            hint = ""
            if exc.code in (401, 403):
                hint = (
                    " (set RABBITMQ_MANAGEMENT_URL=http://USER:PASSWORD@HOST:15672"
                    " to a user tagged administrator)"
                )
            raise BrokerAdminError(f"{what}: HTTP {exc.code} {exc.reason}: {detail}{hint}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            raise BrokerUnreachableError(f"{what}: unreachable ({reason})") from None
        return status, json.loads(answer) if answer.strip() else None

    def probe(self) -> None:
        """Raise ``BrokerUnreachableError`` unless something answers HTTP at the API's address.

        Any HTTP answer will do: wrong credentials are reported by the call that needs them.
        """
        try:
            self._request("GET", "overview")
        except BrokerUnreachableError:
            raise
        except BrokerAdminError:
            return

    @staticmethod
    def _q(name: str) -> str:
        return quote(name, safe="")

    def vhosts(self) -> list[str]:
        return [row["name"] for row in self._request("GET", "vhosts?columns=name")]

    def vhost_add(self, name: str) -> None:
        status, _ = self._send("PUT", f"vhosts/{self._q(name)}", {})
        if status == 201:
            # The API gives whoever creates a vhost every permission in it; rabbitmqctl gives
            # nobody any. Least privilege: the caller grants what it means to (as rabbitmqctl).
            self.permissions_clear(name, self.user)

    def vhost_delete(self, name: str) -> None:
        self._request("DELETE", f"vhosts/{self._q(name)}", absent_ok=True, timeout=VHOST_DELETE_TIMEOUT_S)

    def permissions(self, vhost: str) -> list[Permission]:
        rows = self._request("GET", f"vhosts/{self._q(vhost)}/permissions")
        return [Permission(row["user"], row["configure"], row["write"], row["read"]) for row in rows]

    def permissions_set(self, vhost: str, user: str, configure: str, write: str, read: str) -> None:
        body = {"configure": configure, "write": write, "read": read}
        self._request("PUT", f"permissions/{self._q(vhost)}/{self._q(user)}", body)

    def permissions_clear(self, vhost: str, user: str) -> None:
        self._request("DELETE", f"permissions/{self._q(vhost)}/{self._q(user)}", absent_ok=True)

    def users(self) -> list[User]:
        return [User(row["name"], _tags(row.get("tags"))) for row in self._request("GET", "users")]

    def user_ensure(self, name: str, password: str, tags: Sequence[str] = ()) -> None:
        _password_check(password)
        body = {"password": password, "tags": ",".join(tags)}
        self._request("PUT", f"users/{self._q(name)}", body, secrets=[password])

    def user_delete(self, name: str) -> None:
        self._request("DELETE", f"users/{self._q(name)}", absent_ok=True)

    def policies(self, vhost: str) -> list[Policy]:
        rows = self._request("GET", f"policies/{self._q(vhost)}")
        return [Policy(row["name"], row["pattern"], row["apply-to"], row["definition"]) for row in rows]

    def policy_set(
        self, vhost: str, name: str, pattern: str, definition: dict[str, Any], apply_to: str = "queues"
    ) -> None:
        body = {"pattern": pattern, "definition": definition, "apply-to": apply_to}
        self._request("PUT", f"policies/{self._q(vhost)}/{self._q(name)}", body)

    def policy_clear(self, vhost: str, name: str) -> None:
        self._request("DELETE", f"policies/{self._q(vhost)}/{self._q(name)}", absent_ok=True)

    def queues(self, vhost: str) -> list[Queue]:
        columns = "name,type,policy,messages,messages_ready,messages_unacknowledged,consumers"
        return [_queue(row) for row in self._request("GET", f"queues/{self._q(vhost)}?columns={columns}")]

    def bindings(self, vhost: str) -> list[Binding]:
        return [
            Binding(row["source"], row["destination"], row["destination_type"], row["routing_key"])
            for row in self._request("GET", f"bindings/{self._q(vhost)}")
        ]


class RabbitmqctlBrokerAdmin(BrokerAdmin):
    """``rabbitmqctl`` on this host (root or the ``rabbitmq`` user): the fallback."""

    where = "rabbitmqctl"

    def __init__(self, *, timeout: float = RABBITMQCTL_TIMEOUT_S) -> None:
        # /usr/sbin is often not on a normal user's PATH.
        self.command = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"RabbitmqctlBrokerAdmin({self.command!r})"

    def _ctl(self, *args: str, stdin: str | None = None, absent_ok: bool = False) -> str:
        """Run ``rabbitmqctl -q ARGS``; its standard output. Secrets go in ``stdin`` only."""
        what = f"rabbitmqctl {' '.join(args)}"
        try:
            done = subprocess.run(
                [self.command, "-q", *args],
                input=stdin if stdin is not None else "",
                capture_output=True,
                text=True,
                timeout=self.timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BrokerAdminError(f"{what}: {exc.__class__.__name__}: {exc}") from None
        if done.returncode != 0:
            output = _scrub(f"{done.stderr.strip()} {done.stdout.strip()}".strip(), [stdin or ""])
            if absent_ok and "does not exist" in output:
                return ""
            raise BrokerAdminError(f"{what}: exit status {done.returncode}: {output[:500]}")
        return done.stdout

    def _json(self, *args: str) -> list[dict[str, Any]]:
        output = self._ctl(*args, "--formatter", "json")
        return json.loads(output) if output.strip() else []

    def probe(self) -> None:
        """Raise ``BrokerAdminError`` unless ``rabbitmqctl`` runs as this user and reaches the node."""
        self._ctl("ping")

    def vhosts(self) -> list[str]:
        return [row["name"] for row in self._json("list_vhosts", "name")]

    def vhost_add(self, name: str) -> None:
        self._ctl("add_vhost", name)

    def vhost_delete(self, name: str) -> None:
        self._ctl("delete_vhost", name, absent_ok=True)

    def permissions(self, vhost: str) -> list[Permission]:
        rows = self._json("list_permissions", "-p", vhost)
        return [Permission(row["user"], row["configure"], row["write"], row["read"]) for row in rows]

    def permissions_set(self, vhost: str, user: str, configure: str, write: str, read: str) -> None:
        self._ctl("set_permissions", "-p", vhost, "--", user, configure, write, read)

    def permissions_clear(self, vhost: str, user: str) -> None:
        self._ctl("clear_permissions", "-p", vhost, "--", user, absent_ok=True)

    def users(self) -> list[User]:
        return [User(row["user"], _tags(row.get("tags"))) for row in self._json("list_users")]

    def user_ensure(self, name: str, password: str, tags: Sequence[str] = ()) -> None:
        _password_check(password)
        # Without the password argument, rabbitmqctl reads it from standard input.
        command = "change_password" if name in {user.name for user in self.users()} else "add_user"
        self._ctl(command, "--", name, stdin=password + "\n")
        self._ctl("set_user_tags", "--", name, *tags)

    def user_delete(self, name: str) -> None:
        self._ctl("delete_user", "--", name, absent_ok=True)

    def policies(self, vhost: str) -> list[Policy]:
        return [
            Policy(row["name"], row["pattern"], row["apply-to"], json.loads(row["definition"]))
            if isinstance(row["definition"], str)
            else Policy(row["name"], row["pattern"], row["apply-to"], row["definition"])
            for row in self._json("list_policies", "-p", vhost)
        ]

    def policy_set(
        self, vhost: str, name: str, pattern: str, definition: dict[str, Any], apply_to: str = "queues"
    ) -> None:
        self._ctl(
            "set_policy", "-p", vhost, "--apply-to", apply_to, "--", name, pattern, json.dumps(definition)
        )

    def policy_clear(self, vhost: str, name: str) -> None:
        self._ctl("clear_policy", "-p", vhost, "--", name, absent_ok=True)

    def queues(self, vhost: str) -> list[Queue]:
        columns = ["name", "type", "policy", "messages", "messages_ready", "messages_unacknowledged"]
        return [_queue(row) for row in self._json("list_queues", "-p", vhost, *columns, "consumers")]

    def bindings(self, vhost: str) -> list[Binding]:
        columns = ["source_name", "destination_name", "destination_kind", "routing_key"]
        return [
            Binding(row["source_name"], row["destination_name"], row["destination_kind"], row["routing_key"])
            for row in self._json("list_bindings", "-p", vhost, *columns)
        ]


@functools.cache
def broker_admin() -> BrokerAdmin:
    """The management API if anything answers at its address, else ``rabbitmqctl`` if it runs.

    Chosen once per process (``broker_admin.cache_clear()`` chooses again).
    """
    http = HttpBrokerAdmin.from_environment()
    try:
        http.probe()
    except BrokerUnreachableError as unreachable:
        ctl = RabbitmqctlBrokerAdmin()
        try:
            ctl.probe()
        except BrokerAdminError as refused:
            raise BrokerAdminError(
                f"{http.where} unreachable and rabbitmqctl not runnable as this user: "
                f"{ENABLE_HINT} (API: {unreachable}; {refused})"
            ) from None
        logger.warning("broker admin: %s unreachable, using rabbitmqctl (%s)", http.where, ENABLE_HINT)
        return ctl
    return http


# --------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harness.broker_admin",
        description="Broker administration through the management API (rabbitmqctl as a fallback).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("vhosts", help="list the vhosts, one a line")
    sub.add_parser("users", help="list the users: name TAB comma-separated tags")
    sub.add_parser("permissions", help="list a vhost's permissions").add_argument("vhost")
    for name in ("vhost-add", "vhost-delete", "user-delete"):
        sub.add_parser(name).add_argument("name")
    ensure = sub.add_parser("user-ensure", help="create or update a user: the password on stdin")
    ensure.add_argument("name")
    ensure.add_argument("--tag", action="append", default=[], dest="tags")
    grant = sub.add_parser("permissions-set")
    for name in ("vhost", "user", "configure", "write", "read"):
        grant.add_argument(name)
    revoke = sub.add_parser("permissions-clear")
    revoke.add_argument("vhost")
    revoke.add_argument("user")
    args = parser.parse_args(argv)

    out = sys.stdout.write
    try:
        admin = broker_admin()
        if args.command == "vhosts":
            out("".join(f"{name}\n" for name in admin.vhosts()))
        elif args.command == "users":
            out("".join(f"{user.name}\t{','.join(user.tags)}\n" for user in admin.users()))
        elif args.command == "permissions":
            out("".join("\t".join(row) + "\n" for row in admin.permissions(args.vhost)))
        elif args.command == "vhost-add":
            admin.vhost_add(args.name)
        elif args.command == "vhost-delete":
            admin.vhost_delete(args.name)
        elif args.command == "user-delete":
            admin.user_delete(args.name)
        elif args.command == "user-ensure":
            admin.user_ensure(args.name, sys.stdin.readline().rstrip("\r\n"), args.tags)
        elif args.command == "permissions-set":
            admin.permissions_set(args.vhost, args.user, args.configure, args.write, args.read)
        elif args.command == "permissions-clear":
            admin.permissions_clear(args.vhost, args.user)
    except (BrokerAdminError, ValueError) as exc:
        sys.stderr.write(f"broker_admin: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
