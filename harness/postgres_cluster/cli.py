"""The command line: ``python -m harness.postgres_cluster COMMAND`` (the package's docstring lists them)."""

import sys
from typing import NoReturn

import harness.postgres_cluster
from harness.clusters import usage_exit
from harness.postgres_cluster.nodes import Nodes
from harness.postgres_cluster.settings import Refused, log


def usage() -> NoReturn:
    usage_exit(harness.postgres_cluster.__doc__ or "")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        usage()
    command, rest = args[0], args[1:]
    nodes = Nodes()
    one_node = {"kill": nodes.kill, "kill-patroni": nodes.kill_patroni, "restart": nodes.restart}
    no_argument = {
        "up": nodes.up,
        "down": nodes.down,
        "status": nodes.status,
        "members": nodes.members_print,
        "leader": nodes.leader_print,
        "wait": nodes.wait,
    }
    try:
        if command in no_argument:
            no_argument[command]()
        elif command == "urls" and rest[:1] in ([], ["--conninfo"]):
            print(nodes.conninfo() if rest else nodes.url())  # noqa: T201 - the command's output
        elif command in one_node and len(rest) == 1:
            one_node[command](rest[0])
        else:
            usage()
    except Refused as exc:
        log(f"error: {exc}")
        return 1
    return 0
