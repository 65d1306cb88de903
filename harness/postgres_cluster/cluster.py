"""``PostgresCluster``: what the failover tests and the chaos run hold.

It runs the command line (``python -m harness.postgres_cluster``) in a subprocess for what
starts, stops or asks the nodes, and parses what it prints; names, ports and URLs it reads from
the same ``Settings`` the command line does.
"""

import os
import sys
import tempfile
from pathlib import Path

from harness.clusters import ClusterError, command_run, stale_private_dirs
from harness.polling import poll_until
from harness.ports import free_ports
from harness.postgres_cluster.settings import Settings

REPO = Path(__file__).resolve().parents[2]


class PostgresCluster:
    """PostgreSQL nodes ``p1``..``pN`` on this host; the primary follows Patroni's leader."""

    def __init__(self, *, env: dict[str, str] | None = None, timeout: float = 300) -> None:
        self.env = {**os.environ, **(env or {})}
        self.timeout = timeout

    @classmethod
    def private(
        cls,
        *,
        name: str | None = None,
        nodes: int = 3,
        synchronous: bool = True,
        max_failover_lag: int | None = None,
        database: str = "beans",
        timeout: float = 300,
    ) -> "PostgresCluster":
        """Return a cluster of this process's own: scope, ports and directory no one else uses.

        Two test runs at once (or a developer's ``python -m harness.postgres_cluster up``) then never
        stop or follow each other's nodes. ``synchronous=False`` replicates asynchronously
        (the negative control: a failover may lose acknowledged commits).
        """
        name = name or f"beans-t{os.getpid()}"
        # Start the search at a per-process offset, so two runs starting together rarely race.
        offset = os.getpid() % 50 * 3
        return cls(
            env={
                "POSTGRES_CLUSTER_NAME": name,
                "POSTGRES_CLUSTER_DIR": str(Path(tempfile.gettempdir()) / f"{name}-postgres-cluster"),
                "POSTGRES_CLUSTER_NODES": str(nodes),
                "POSTGRES_CLUSTER_PG_PORT": str(free_ports(nodes, start=15440, stop=15999, offset=offset)),
                "POSTGRES_CLUSTER_API_PORT": str(free_ports(nodes, start=18100, stop=18999, offset=offset)),
                "POSTGRES_CLUSTER_ETCD_PORT": str(free_ports(2, start=22400, stop=22999, offset=offset)),
                "POSTGRES_CLUSTER_SYNCHRONOUS": "on" if synchronous else "off",
                "POSTGRES_CLUSTER_DB": database,
                **({"POSTGRES_CLUSTER_MAX_FAILOVER_LAG": str(max_failover_lag)} if max_failover_lag else {}),
            },
            timeout=timeout,
        )

    @classmethod
    def reap_stale(cls) -> list[str]:
        """Stop the private clusters of test processes that no longer run (killed mid-test)."""
        reaped = []
        for name, directory in stale_private_dirs("postgres-cluster"):
            cls(env={"POSTGRES_CLUSTER_NAME": name, "POSTGRES_CLUSTER_DIR": str(directory)}).down()
            reaped.append(name)
        return reaped

    def _run(self, *args: str, timeout: float | None = None) -> str:
        # Not from Django settings: the chaos run drives clusters before it sets Django up.
        return command_run(
            [sys.executable, "-m", "harness.postgres_cluster", *args],
            env=self.env,
            timeout=timeout or self.timeout,
            cwd=REPO,
        )

    @property
    def settings(self) -> Settings:
        return Settings(self.env)

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(Settings.node_name(i) for i in self.settings.nodes)

    # --- lifecycle ------------------------------------------------------------------

    def up(self) -> str:
        """Start etcd and every node (idempotent), wait until all stream; return the URL."""
        self._run("up")
        return self.urls()

    def down(self) -> None:
        """Stop every node and etcd, remove the cluster's directory (fine when nothing runs)."""
        self._run("down")

    def wait(self) -> None:
        """Wait until a leader takes writes through the URL (and a synchronous standby exists)."""
        self._run("wait")

    def kill(self, node: str) -> str:
        """SIGKILL the postmaster of ``node`` (``p2``, or ``leader``); its Patroni lives on.

        Return the node's name (what ``leader`` was).
        """
        name = self.leader() if node == "leader" else node
        self._run("kill", name)
        return name

    def kill_patroni(self, node: str) -> str:
        """SIGKILL the Patroni of ``node`` and then its postmaster: the whole node dies."""
        name = self.leader() if node == "leader" else node
        self._run("kill-patroni", name)
        return name

    def restart(self, node: str) -> None:
        """Start the node's Patroni if it is not running; wait until the node streams again."""
        self._run("restart", node)

    # --- inspection -----------------------------------------------------------------

    def urls(self) -> str:
        """The libpq multi-host URL that reaches the primary (``target_session_attrs=read-write``)."""
        return self.settings.url()

    def node_url(self, node: str, *, dbname: str = "postgres") -> str:
        """A URL to ``node`` (``p1``..) alone, primary or not: to look inside one member."""
        return self.settings.node_url(self.settings.index(node), dbname=dbname)

    def conninfo(self) -> str:
        """The same in libpq's keyword form."""
        return self.settings.conninfo()

    def status(self) -> str:
        return self._run("status")

    def members(self) -> dict[str, dict[str, str]]:
        """Each member's ``role`` (leader, sync_standby, replica), ``state``, ``timeline`` and ``lag``."""
        members = {}
        for line in self._run("members").splitlines():
            name, role, state, timeline, lag = line.split()
            members[name] = {"role": role, "state": state, "timeline": timeline, "lag": lag}
        return members

    def leader(self) -> str:
        """The member holding the leader key (``p1``..); ClusterError when there is none."""
        return self._run("leader").strip()

    def sync_standby(self) -> str | None:
        return next((name for name, m in self.members().items() if m["role"] == "sync_standby"), None)

    def wait_for_new_leader(self, old: str, *, timeout: float = 60, interval: float = 0.2) -> str:
        """Poll until a member other than ``old`` holds the leader key and runs; return it."""

        def new_leader() -> str | None:
            return next(
                (
                    name
                    for name, member in self.members().items()
                    if name != old and member["role"] == "leader" and member["state"] == "running"
                ),
                None,
            )

        leader = poll_until(
            new_leader,
            timeout=timeout,
            interval=interval,
            what=f"a new leader after {old}",
            ignore=(ClusterError,),
        )
        assert leader is not None  # poll_until returns only what is truthy
        return leader
