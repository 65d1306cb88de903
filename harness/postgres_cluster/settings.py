"""The cluster as ``POSTGRES_CLUSTER_*`` describes it: names, ports, places, URLs, what is refused.

Reading the environment and checking it start nothing and write nothing. ``Refused`` (shared with the
RabbitMQ cluster) and ``log`` are how every command says what went wrong and what it does.
"""

import os
import pwd
import re
import sys
from collections.abc import Mapping
from pathlib import Path

from harness.clusters import Refused

HOST = "127.0.0.1"
# Ports of the system cluster and of Debian's etcd service.
RESERVED_PORTS = (5432, 2379, 2380)
SYSTEM_DIRS = (
    "/etc/postgresql/",
    "/var/lib/postgresql/",
    "/var/run/postgresql/",
    "/run/postgresql/",
    "/var/lib/etcd/",
)
# The role Patroni replicates with.
REPLICATION_USER = "replicator"


def log(message: str) -> None:
    """What the commands say on the way, on stderr (stdout is their answer)."""
    sys.stderr.write(f"postgres-cluster: {message}\n")
    sys.stderr.flush()


def os_user() -> str:
    """The name of the effective OS user (``id -un``)."""
    return pwd.getpwuid(os.geteuid()).pw_name


def is_root() -> bool:
    return os.geteuid() == 0


class Settings:
    """One cluster's names, ports and places, from ``environ`` (default: this process's environment).

    An empty variable counts as unset, as ``${NAME:-default}`` does. Numbers are kept as text and
    refused only when used (``check`` refuses them all up front).
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ

        def get(name: str, default: str) -> str:
            return env.get(name) or default

        # As `realpath -m`: absolute, symlinks resolved where they exist.
        self.dir = Path(os.path.realpath(get("POSTGRES_CLUSTER_DIR", "/tmp/beans-postgres-cluster")))  # noqa: S108 - the documented default
        self.name = get("POSTGRES_CLUSTER_NAME", "beans")
        node_count = get("POSTGRES_CLUSTER_NODES", "3")
        # Empty when not 1..9: `check` refuses it, `down` then has no node to stop.
        self.nodes: tuple[int, ...] = (
            tuple(range(1, int(node_count) + 1)) if re.fullmatch(r"[1-9]", node_count) else ()
        )
        self.pg_port_text = get("POSTGRES_CLUSTER_PG_PORT", "5441")
        self.api_port_text = get("POSTGRES_CLUSTER_API_PORT", "8101")
        self.etcd_port_text = get("POSTGRES_CLUSTER_ETCD_PORT", "2479")
        self.synchronous_text = get("POSTGRES_CLUSTER_SYNCHRONOUS", "on")
        self.max_failover_lag = get("POSTGRES_CLUSTER_MAX_FAILOVER_LAG", "1048576")
        self.db = get("POSTGRES_CLUSTER_DB", "beans")
        self.app_user = get("POSTGRES_CLUSTER_APP_USER", "") or os_user()
        self.bin_dir_text = env.get("POSTGRES_CLUSTER_BIN_DIR", "")
        self.timeout_text = get("POSTGRES_CLUSTER_TIMEOUT_S", "90")
        # Marks a directory as ours, so `down` never removes anything else.
        self.marker = self.dir / ".postgres-cluster"
        self.etcd_dir = self.dir / "etcd"
        self.socket_dir = self.dir / "run"
        self.post_bootstrap = self.dir / "post-bootstrap"
        self.ctl_config = self.dir / "patronictl.yml"

    # --- numbers --------------------------------------------------------------------------

    @staticmethod
    def _number(text: str) -> int:
        if not text.isdigit():
            raise Refused("ports and POSTGRES_CLUSTER_TIMEOUT_S must be numbers")
        return int(text)

    @property
    def timeout_s(self) -> int:
        return self._number(self.timeout_text)

    @property
    def etcd_port(self) -> int:
        return self._number(self.etcd_port_text)

    @property
    def etcd_peer_port(self) -> int:
        return self.etcd_port + 1

    def pg_port(self, i: int) -> int:
        return self._number(self.pg_port_text) + i - 1

    def api_port(self, i: int) -> int:
        return self._number(self.api_port_text) + i - 1

    @property
    def synchronous(self) -> bool:
        word = self.synchronous_text.lower()
        if word in ("on", "true", "yes", "1"):
            return True
        if word in ("off", "false", "no", "0"):
            return False
        raise Refused(f"POSTGRES_CLUSTER_SYNCHRONOUS must be on or off, not '{self.synchronous_text}'")

    @property
    def sync_wanted(self) -> bool:
        """Whether a synchronous standby is expected: synchronous mode and at least two nodes."""
        return self.synchronous and len(self.nodes) >= 2

    # --- names and places -----------------------------------------------------------------

    @staticmethod
    def node_name(i: int) -> str:
        return f"p{i}"

    def node_dir(self, i: int) -> Path:
        return self.dir / f"p{i}"

    def data_dir(self, i: int) -> Path:
        return self.node_dir(i) / "data"

    def config_file(self, i: int) -> Path:
        return self.node_dir(i) / "patroni.yml"

    def index(self, arg: str) -> int:
        """``p2`` or ``2``: 2 (``leader`` is the caller's to resolve)."""
        for i in self.nodes:
            if arg in (f"p{i}", str(i)):
                return i
        names = "".join(f"p{i} " for i in self.nodes)
        raise Refused(f"unknown node '{arg}' (expected one of {names}or leader)")

    # --- how clients reach the primary ----------------------------------------------------

    def url(self) -> str:
        """The libpq multi-host URL; libpq keeps the first host that takes writes."""
        hosts = ",".join(f"{HOST}:{self.pg_port(i)}" for i in self.nodes)
        return f"postgresql://{self.app_user}@{hosts}/{self.db}?target_session_attrs=read-write"

    def conninfo(self) -> str:
        """The same in libpq's keyword form."""
        hosts = ",".join(HOST for _ in self.nodes)
        ports = ",".join(str(self.pg_port(i)) for i in self.nodes)
        return (
            f"host={hosts} port={ports} user={self.app_user} dbname={self.db} target_session_attrs=read-write"
        )

    def node_url(self, i: int, *, dbname: str = "postgres") -> str:
        """A URL to node i alone, primary or not."""
        return f"postgresql://{self.app_user}@{HOST}:{self.pg_port(i)}/{dbname}"

    # --- what is refused ------------------------------------------------------------------

    def ports(self) -> list[int]:
        return [self.etcd_port, self.etcd_peer_port] + [
            port for i in self.nodes for port in (self.pg_port(i), self.api_port(i))
        ]

    def check(self) -> None:
        """Refuse settings that would touch the system's PostgreSQL or etcd, or that cannot work."""
        if not self.nodes:
            raise Refused("POSTGRES_CLUSTER_NODES must be a number from 1 to 9")
        for text in (self.pg_port_text, self.api_port_text, self.etcd_port_text, self.timeout_text):
            self._number(text)
        if not re.fullmatch(r"[A-Za-z0-9_-]+", self.name):
            raise Refused("POSTGRES_CLUSTER_NAME: letters, digits, - and _ only")
        if not re.fullmatch(r"/[A-Za-z0-9._/-]+", str(self.dir)):
            raise Refused(
                "POSTGRES_CLUSTER_DIR: an absolute path of letters, digits, '.', '_', '-' and '/' only"
            )
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", self.db):
            raise Refused("POSTGRES_CLUSTER_DB: letters, digits, - and _ only")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", self.app_user):
            raise Refused("POSTGRES_CLUSTER_APP_USER: letters, digits, ., - and _ only")
        if self.app_user == REPLICATION_USER:
            raise Refused("POSTGRES_CLUSTER_APP_USER=replicator is the replication role")
        if not self.max_failover_lag.isdigit():
            raise Refused("POSTGRES_CLUSTER_MAX_FAILOVER_LAG must be a number of bytes")
        if f"{self.dir}/".startswith(SYSTEM_DIRS):
            raise Refused(f"{self.dir} belongs to the system's PostgreSQL or etcd")
        self.synchronous  # noqa: B018 - refuses a word that is neither on nor off
        ports = self.ports()
        for port in ports:
            if not 1024 < port < 65536:
                raise Refused(f"port {port} is out of range")
            if port in RESERVED_PORTS:
                raise Refused(f"port {port} would clash with the system's PostgreSQL or etcd")
        if len(set(ports)) != len(ports):
            raise Refused("the PostgreSQL, REST API and etcd port ranges overlap")
        if is_root():
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                raise Refused("PostgreSQL will not run as root, and there is no postgres OS user") from None
