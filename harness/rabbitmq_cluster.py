"""A private 3-node RabbitMQ cluster for fault tests and the chaos run, driven through ``scripts/rabbitmq-cluster``.

The script owns the nodes (names, ports, data, the private Erlang cookie); this
class only shells out to it and parses what ``rabbitmqctl`` prints as JSON.
"""

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.clusters import ClusterError, command_run, stale_private_dirs
from harness.polling import poll_until
from harness.ports import free_ports

# Not from Django settings: the chaos run drives clusters before it sets Django up.
SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "rabbitmq-cluster"


class RabbitCluster:
    """Three RabbitMQ nodes on this host, named ``c1``..``c3`` (``beans-c1@localhost`` ...)."""

    nodes = ("c1", "c2", "c3")

    def __init__(self, *, env: dict[str, str] | None = None, timeout: float = 300) -> None:
        self.env = {**os.environ, **(env or {})}
        self.timeout = timeout
        self.down_nodes: set[str] = set()

    @classmethod
    def private(cls, *, name: str | None = None, timeout: float = 300) -> "RabbitCluster":
        """Return a cluster of this process's own: node names, ports and directory no one else uses.

        Two test runs at once (or a developer's ``scripts/rabbitmq-cluster up``) then never
        stop or join each other's nodes.
        """
        name = name or f"beans-t{os.getpid()}"
        # Start the search at a per-process offset, so two runs starting together rarely race.
        offset = os.getpid() % 50 * 3
        return cls(
            env={
                "RABBITMQ_CLUSTER_NAME": name,
                "RABBITMQ_CLUSTER_DIR": str(Path(tempfile.gettempdir()) / f"{name}-rabbitmq-cluster"),
                "RABBITMQ_CLUSTER_AMQP_PORT": str(free_ports(3, start=5700, stop=5999, offset=offset)),
                "RABBITMQ_CLUSTER_DIST_PORT": str(free_ports(3, start=26000, stop=26999, offset=offset)),
            },
            timeout=timeout,
        )

    @classmethod
    def reap_stale(cls) -> list[str]:
        """Stop the private clusters of test processes that no longer run (killed mid-test)."""
        reaped = []
        for name, directory in stale_private_dirs("rabbitmq-cluster"):
            cls(env={"RABBITMQ_CLUSTER_NAME": name, "RABBITMQ_CLUSTER_DIR": str(directory)}).down()
            reaped.append(name)
        return reaped

    def _run(self, *args: str, timeout: float | None = None) -> str:
        return command_run([str(SCRIPT), *args], env=self.env, timeout=timeout or self.timeout)

    @staticmethod
    def short(node: str) -> str:
        """Return ``c2`` for ``beans-c2@localhost`` (or for ``c2``)."""
        return node.split("@")[0].rsplit("-", 1)[-1]

    # --- lifecycle ------------------------------------------------------------------

    def up(self) -> str:
        """Start and cluster the three nodes (idempotent); return the ';'-separated URLs."""
        self._run("up")
        self.down_nodes.clear()
        return self.urls

    def down(self) -> None:
        """Stop every node and remove the cluster's directory (fine when nothing runs)."""
        self._run("down")

    def kill(self, node: str) -> None:
        """SIGKILL the node's Erlang VM."""
        self._run("kill", self.short(node))
        self.down_nodes.add(self.short(node))

    def restart(self, node: str) -> None:
        """Start a killed node again and wait until it is back in the cluster."""
        self._run("restart", self.short(node))
        self.down_nodes.discard(self.short(node))

    @property
    def urls(self) -> str:
        return self._run("urls").strip()

    def status(self) -> str:
        return self._run("status")

    # --- inspection -----------------------------------------------------------------

    def live_node(self) -> str:
        return next(node for node in self.nodes if node not in self.down_nodes)

    def ctl_json(self, *args: str, tool: str = "ctl", node: str | None = None) -> Any:
        """Run a rabbitmqctl (or rabbitmq-queues) command on a live node; return its JSON."""
        output = self._run(tool, node or self.live_node(), "-q", *args, "--formatter", "json", timeout=120)
        return json.loads(output)

    def queues(self) -> dict[str, dict[str, Any]]:
        """Return every queue of the default vhost with its leader, members and message counts."""
        rows = self.ctl_json(
            "list_queues", "name", "leader", "members", "online", "messages", "messages_unacknowledged"
        )
        return {row["name"]: row for row in rows}

    def leader_of(self, queue: str) -> str:
        return str(self.queues()[queue]["leader"])

    def members_of(self, queue: str) -> list[str]:
        return list(self.queues()[queue]["members"])

    def raft_states(self, queue: str) -> dict[str, str]:
        """Return each member's Raft state of a quorum queue (``leader``, ``follower``, or why not)."""
        rows = self.ctl_json("quorum_status", queue, tool="queues")
        return {row["Node Name"]: str(row["Raft State"]) for row in rows}

    def message_counts(self) -> dict[str, int]:
        """Return ready + unacknowledged messages of every queue (lags a few seconds)."""
        return {name: int(row["messages"] or 0) for name, row in self.queues().items()}

    def wait_for(
        self, predicate: Callable[[], bool], *, timeout: float, what: str, interval: float = 1.0
    ) -> None:
        """Poll ``predicate`` (which may raise ClusterError while a node settles) until true."""
        poll_until(predicate, timeout=timeout, interval=interval, what=what, ignore=(ClusterError,))
