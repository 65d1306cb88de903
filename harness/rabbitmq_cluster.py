"""A private 3-node RabbitMQ cluster on this host, for the cluster fault tests and the chaos run.

    python -m harness.rabbitmq_cluster up             start c1..c3, cluster them, print the AMQP URLs
    python -m harness.rabbitmq_cluster down           stop every node and remove the cluster directory
    python -m harness.rabbitmq_cluster status         cluster status, then leader and members of each queue
    python -m harness.rabbitmq_cluster kill NODE      SIGKILL the node's Erlang VM (NODE: c2, beans-c2@localhost)
    python -m harness.rabbitmq_cluster restart NODE   start a stopped or killed node again and wait for it
    python -m harness.rabbitmq_cluster urls           print the AMQP URLs, ';'-separated (Celery failover)
    python -m harness.rabbitmq_cluster ctl NODE ARGS  rabbitmqctl ARGS against NODE (NODE "any": a live one)
    python -m harness.rabbitmq_cluster queues NODE ARGS   rabbitmq-queues ARGS against NODE

Each node has its own name, AMQP port (127.0.0.1 only), distribution port, data, logs,
config and an empty plugins file; all share a private Erlang cookie generated into the
cluster directory. The system node (rabbit@localhost, 5672/25672, the cookie in
/var/lib/rabbitmq) is never touched: nodes and CLI calls run with HOME set to the cluster
directory and their own RABBITMQ_CONF_ENV_FILE, so /etc/rabbitmq/rabbitmq-env.conf and any
~/.erlang.cookie stay out of it. epmd (4369) is shared, which is fine.

Environment:
  RABBITMQ_CLUSTER_DIR                 state directory (default /tmp/beans-rabbitmq-cluster)
  RABBITMQ_CLUSTER_NAME                node name prefix (default beans: beans-c1@localhost ...)
  RABBITMQ_CLUSTER_AMQP_PORT           AMQP port of c1; c2, c3 use the next ones (default 5681)
  RABBITMQ_CLUSTER_DIST_PORT           distribution port of c1, likewise (default 25681)
  RABBITMQ_CLUSTER_CONSUMER_TIMEOUT_MS consumer_timeout of every node (unset: the default)
  RABBITMQ_CLUSTER_MEMORY_HIGH_WATERMARK  per node (default 1GB: 3 nodes stay well inside RAM)
  RABBITMQ_CLUSTER_TIMEOUT_S           longest wait for any one step (default 90)
  RABBITMQ_CLUSTER_QUEUES              queues `status` describes (default: the project's)

``Nodes`` does it (standard library only, no Django); ``RabbitCluster`` is what the tests and the
chaos run hold: it runs this module's command line in a subprocess, as it ran the bash script
this replaces, and parses what ``rabbitmqctl`` prints as JSON.
"""

import json
import os
import re
import secrets
import shutil
import signal
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, NoReturn

from harness.clusters import (
    ClusterError,
    Refused,
    command_run,
    private_dir_claim,
    private_dir_remove,
    stale_private_dirs,
    usage_exit,
)
from harness.polling import poll_until
from harness.ports import free_ports, port_in_use

REPO = Path(__file__).resolve().parent.parent
HOST = "localhost"
NODES = (1, 2, 3)
SYSTEM_AMQP_PORT = 5672
SYSTEM_DIST_PORT = 25672


def log(message: str) -> None:
    sys.stderr.write(f"rabbitmq-cluster: {message}\n")
    sys.stderr.flush()


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default  # as ${NAME:-default}: empty is unset


class Nodes:
    """The nodes of one cluster, as the environment (``RABBITMQ_CLUSTER_*``) describes them."""

    def __init__(self) -> None:
        self.dir = Path(_env("RABBITMQ_CLUSTER_DIR", "/tmp/beans-rabbitmq-cluster"))  # noqa: S108 - the documented default
        self.name = _env("RABBITMQ_CLUSTER_NAME", "beans")
        self.amqp_port_text = _env("RABBITMQ_CLUSTER_AMQP_PORT", "5681")
        self.dist_port_text = _env("RABBITMQ_CLUSTER_DIST_PORT", "25681")
        self.timeout_s = int(_env("RABBITMQ_CLUSTER_TIMEOUT_S", "90"))
        self.memory_high_watermark = _env("RABBITMQ_CLUSTER_MEMORY_HIGH_WATERMARK", "1GB")
        self.queues = _env("RABBITMQ_CLUSTER_QUEUES", "beans trades housekeeping dead-letters").split()
        self.consumer_timeout_ms = os.environ.get("RABBITMQ_CLUSTER_CONSUMER_TIMEOUT_MS", "")
        # Marks a directory as ours, so `down` never removes anything else.
        self.marker = self.dir / ".rabbitmq-cluster"
        self.cookie_file = self.dir / ".erlang.cookie"

    # --- names, ports, places ------------------------------------------------------------

    def node_name(self, i: int) -> str:
        return f"{self.name}-c{i}@{HOST}"

    def node_dir(self, i: int) -> Path:
        return self.dir / f"c{i}"

    def _port(self, text: str, i: int) -> int:
        if not text.isdigit():
            raise Refused("ports must be numbers")
        return int(text) + i - 1

    def amqp_port(self, i: int) -> int:
        return self._port(self.amqp_port_text, i)

    def dist_port(self, i: int) -> int:
        return self._port(self.dist_port_text, i)

    def pid_file(self, i: int) -> Path:
        return self.node_dir(i) / "rabbitmq.pid"

    def index(self, arg: str) -> int:
        """``c2``, ``2``, ``beans-c2`` or ``beans-c2@localhost``: 2."""
        for i in NODES:
            if arg in (f"c{i}", str(i), f"{self.name}-c{i}", self.node_name(i)):
                return i
        raise Refused(f"unknown node '{arg}' (expected one of c1 c2 c3 or {self.node_name(1)} ...)")

    def urls(self) -> str:
        return ";".join(f"amqp://guest:guest@127.0.0.1:{self.amqp_port(i)}//" for i in NODES)

    # --- processes ------------------------------------------------------------------------

    def _is_node_process(self, pid: int, i: int) -> bool:
        """Whether ``pid`` is node i's Erlang VM (its name in the environment: a recycled pid is not)."""
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            return False
        return b"beam" in cmdline[0] and f"RABBITMQ_NODENAME={self.node_name(i)}".encode() in environ

    def pid(self, i: int) -> int | None:
        """The OS pid of node i's Erlang VM if it runs, from its pid file (or, if the directory was
        removed under a running node, from /proc)."""
        try:
            text = re.sub(r"\D", "", self.pid_file(i).read_text())
        except OSError:
            text = ""
        if text and self._is_node_process(int(text), i):
            return int(text)
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and self._is_node_process(int(entry.name), i):
                return int(entry.name)
        return None

    def running(self, i: int) -> bool:
        return self.pid(i) is not None

    def first_live(self) -> int:
        live = next((i for i in NODES if self.running(i)), None)
        if live is None:
            raise Refused("no node is running")
        return live

    @staticmethod
    def wait_gone(pid: int, timeout: float = 30) -> bool:
        """Wait (bounded) until process ``pid`` has exited; False if it still runs."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                os.kill(pid, 0)
            except OSError:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.2)

    # --- the CLI tools --------------------------------------------------------------------

    def common_env(self) -> dict[str, str]:
        """The environment of the server and the CLI: our HOME (cookie), no system env file."""
        return {
            **os.environ,
            "HOME": str(self.dir),
            "RABBITMQ_CONF_ENV_FILE": str(self.dir / "rabbitmq-env.conf"),
            # CLI distribution ports: away from the system CLI's 35672-35682.
            "RABBITMQ_CTL_DIST_PORT_MIN": "35700",
            "RABBITMQ_CTL_DIST_PORT_MAX": "35799",
        }

    def cookie(self) -> str:
        return self.cookie_file.read_text()

    def cli_argv(self, tool: str, i: int, *args: str) -> list[str]:
        """``tool`` (rabbitmqctl, rabbitmq-queues) against node i, bounded in time."""
        return [
            "timeout", "--kill-after=5", str(self.timeout_s + 10),
            str(bin_dir() / tool), "--erlang-cookie", self.cookie(), "-n", self.node_name(i), *args,
        ]  # fmt: skip

    def cli(
        self,
        tool: str,
        i: int,
        *args: str,
        stdout: int | IO[Any] | None = None,
        stderr: int | IO[Any] | None = None,
    ) -> int:
        """Run ``tool`` against node i; its exit code."""
        argv = self.cli_argv(tool, i, *args)
        return subprocess.run(
            argv, cwd=self.dir, env=self.common_env(), stdout=stdout, stderr=stderr, check=False
        ).returncode

    def ctl(self, i: int, *args: str, **streams: Any) -> int:
        return self.cli("rabbitmqctl", i, *args, **streams)

    def ctl_ok(self, i: int, *args: str) -> None:
        """``ctl``, its failure the command's (exit with its code, as ``set -e`` did)."""
        code = self.ctl(i, *args)
        if code != 0:
            raise SystemExit(code)

    def clustered(self, i: int) -> bool:
        """Whether node i is a member of c1's cluster (as node i sees it)."""
        argv = self.cli_argv("rabbitmqctl", i, "-q", "cluster_status", "--formatter", "json")
        done = subprocess.run(
            argv, cwd=self.dir, env=self.common_env(), capture_output=True, text=True, check=False
        )
        return f'"{self.node_name(1)}"' in done.stdout

    def logged(self, i: int, *args: str) -> None:
        """``ctl`` with its chatter (join_cluster logs harmless errors) in cli.log, shown only on failure."""
        out = self.dir / "cli.log"
        out.touch()
        start = len(out.read_bytes().splitlines())
        with out.open("a") as log_file:
            log_file.write(f"$ ctl {i} {' '.join(args)}\n")
            log_file.flush()
            code = self.ctl(i, *args, stdout=log_file, stderr=subprocess.STDOUT)
        if code != 0:
            sys.stderr.write("".join(out.read_text(errors="replace").splitlines(keepends=True)[start:]))
            raise Refused(f"step failed: ctl {i} {' '.join(args)}")

    # --- one node -------------------------------------------------------------------------

    def config(self, i: int) -> str:
        lines = [
            "# Written by harness/rabbitmq_cluster.py when the node starts from 'up'.",
            f"listeners.tcp.local = 127.0.0.1:{self.amqp_port(i)}",
            "loopback_users.guest = true",
            f"vm_memory_high_watermark.absolute = {self.memory_high_watermark}",
            "disk_free_limit.absolute = 50MB",
            "log.file.level = info",
            "log.console = false",
        ]
        if self.consumer_timeout_ms:
            lines.append(f"consumer_timeout = {self.consumer_timeout_ms}")
        return "".join(f"{line}\n" for line in lines)

    def config_write(self, i: int) -> None:
        """Write a stopped node's config; for a running one only warn if it would change."""
        directory = self.node_dir(i)
        if self.running(i):
            conf = directory / "rabbitmq.conf"
            if not conf.exists() or conf.read_text() != self.config(i):
                log(
                    f"warning: {self.node_name(i)} runs with another config; 'down' then 'up' to apply this one"
                )
            return
        (directory / "mnesia").mkdir(parents=True, exist_ok=True)
        (directory / "log").mkdir(parents=True, exist_ok=True)
        # No plugins: no management listener to clash with the system node's.
        (directory / "enabled_plugins").write_text("[].\n")
        (directory / "rabbitmq.conf").write_text(self.config(i))
        advanced = directory / "advanced.config"
        if self.consumer_timeout_ms:
            # Check delivery timeouts every second instead of every minute (as RabbitMQ's own
            # consumer_timeout tests do), so a lowered timeout shows within a test.
            advanced.write_text("[{rabbit, [{channel_tick_interval, 1000}]}].\n")
        else:
            advanced.unlink(missing_ok=True)

    def start(self, i: int) -> None:
        directory, name = self.node_dir(i), self.node_name(i)
        pid = self.pid(i)
        if pid is not None:
            log(f"{name} already running (pid {pid})")
            return
        if not (directory / "rabbitmq.conf").is_file():
            self.config_write(i)
        if port_in_use(self.amqp_port(i)):
            raise Refused(
                f"port {self.amqp_port(i)} is taken by another process; set RABBITMQ_CLUSTER_AMQP_PORT"
            )
        self.pid_file(i).unlink(missing_ok=True)
        log(f"starting {name} (amqp 127.0.0.1:{self.amqp_port(i)}, dist {self.dist_port(i)})")
        env = {
            **self.common_env(),
            "RABBITMQ_NODENAME": name,
            "RABBITMQ_DIST_PORT": str(self.dist_port(i)),
            "RABBITMQ_MNESIA_BASE": str(directory / "mnesia"),
            "RABBITMQ_LOG_BASE": str(directory / "log"),
            "RABBITMQ_PID_FILE": str(self.pid_file(i)),
            "RABBITMQ_CONFIG_FILE": str(directory / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(directory / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(directory / "enabled_plugins"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": f"-setcookie {self.cookie()} -kernel inet_dist_use_interface {{127,0,0,1}}",
        }
        startup_log = directory / "log" / "startup.log"
        with startup_log.open("ab") as out:
            code = subprocess.run(
                ["timeout", str(self.timeout_s), str(bin_dir() / "rabbitmq-server"), "-detached"],
                cwd=self.dir,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                check=False,
            ).returncode
        if code != 0:
            raise Refused(f"rabbitmq-server for {name} failed; see {startup_log}")

    def log_tail(self, i: int) -> None:
        for path in (
            self.node_dir(i) / "log" / "startup.log",
            self.node_dir(i) / "log" / f"{self.node_name(i)}.log",
        ):
            if path.is_file() and path.stat().st_size > 0:
                lines = path.read_text(errors="replace").splitlines()[-20:]
                sys.stderr.write(f"--- {path}\n" + "".join(f"{line}\n" for line in lines))

    def wait(self, i: int) -> None:
        """Wait (bounded) until node i's VM runs and the RabbitMQ application has booted."""
        name = self.node_name(i)
        deadline = time.monotonic() + self.timeout_s
        while not self.running(i):
            if time.monotonic() >= deadline:
                self.log_tail(i)
                raise Refused(f"{name} did not start within {self.timeout_s}s")
            time.sleep(0.5)
        while self.ctl(i, "-q", "ping", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) != 0:
            if not self.running(i) or time.monotonic() >= deadline:
                self.log_tail(i)
                raise Refused(f"{name} is not reachable (died or still booting after {self.timeout_s}s)")
            time.sleep(1)
        left = max(int(deadline - time.monotonic()), 5)
        if self.ctl(i, "-q", "await_startup", "--timeout", str(left), stdout=subprocess.DEVNULL) != 0:
            self.log_tail(i)
            raise Refused(f"{name} did not finish booting within {self.timeout_s}s")
        log(f"{name} is up (pid {self.pid(i)})")

    # --- the cluster ----------------------------------------------------------------------

    def dir_ensure(self) -> None:
        private_dir_claim(self.dir, self.marker)
        (self.dir / "rabbitmq-env.conf").write_text("")
        if not self.cookie_file.is_file() or self.cookie_file.stat().st_size == 0:
            # Erlang wants the cookie readable by its owner only.
            alphabet = string.ascii_letters + string.digits
            descriptor = os.open(self.cookie_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w") as cookie:
                cookie.write("".join(secrets.choice(alphabet) for _ in range(40)))
            self.cookie_file.chmod(0o400)

    def settings_check(self) -> None:
        if not (self.amqp_port_text.isdigit() and self.dist_port_text.isdigit()):
            raise Refused("ports must be numbers")
        if not re.fullmatch(r"[A-Za-z0-9_-]+", self.name):
            raise Refused("RABBITMQ_CLUSTER_NAME: letters, digits, - and _ only")
        for i in NODES:
            for port in (self.amqp_port(i), self.dist_port(i)):
                if port in (SYSTEM_AMQP_PORT, SYSTEM_DIST_PORT):
                    raise Refused(f"port {port} would clash with the system node")
        if self.name == "rabbit":
            raise Refused("RABBITMQ_CLUSTER_NAME=rabbit would clash with the system node")
        if self.consumer_timeout_ms and not self.consumer_timeout_ms.isdigit():
            raise Refused("RABBITMQ_CLUSTER_CONSUMER_TIMEOUT_MS must be a number of milliseconds")

    def cookie_required(self) -> None:
        if not self.cookie_file.is_file():
            raise Refused(f"no cluster in {self.dir} (run 'up')")

    def up(self) -> None:
        self.settings_check()
        self.dir_ensure()
        for i in NODES:
            self.config_write(i)
            self.start(i)
        for i in NODES:
            self.wait(i)
        for i in NODES[1:]:
            if self.clustered(i):
                continue
            log(f"joining {self.node_name(i)} to {self.node_name(1)}")
            self.logged(i, "-q", "stop_app")
            self.logged(i, "-q", "reset")
            self.logged(i, "-q", "join_cluster", self.node_name(1))
            self.logged(i, "-q", "start_app")
            self.logged(i, "-q", "await_startup", "--timeout", str(self.timeout_s))
        self.logged(1, "-q", "enable_feature_flag", "all")
        self.logged(1, "-q", "await_online_nodes", str(len(NODES)), "--timeout", str(self.timeout_s))
        log(f"cluster of {len(NODES)} nodes is up in {self.dir}")
        print(self.urls())  # noqa: T201 - the command's output

    def down(self) -> None:
        # SIGTERM all nodes at once (RabbitMQ stops cleanly on it), then wait for each.
        pids = []
        for i in NODES:
            pid = self.pid(i)
            if pid is not None:
                log(f"stopping {self.node_name(i)} (pid {pid})")
                signal_quietly(pid, signal.SIGTERM)
                pids.append(pid)
        for pid in pids:
            if not self.wait_gone(pid, 30):
                signal_quietly(pid, signal.SIGKILL)
            if not self.wait_gone(pid, 30):
                raise Refused(f"process {pid} did not exit")
        private_dir_remove(self.dir, self.marker, log)
        log("cluster is down")

    def status(self) -> None:
        self.cookie_required()
        for i in NODES:
            pid = self.pid(i)
            if pid is not None:
                print(f"{self.node_name(i)}: running (pid {pid}, amqp {self.amqp_port(i)})", flush=True)  # noqa: T201
            else:
                print(f"{self.node_name(i)}: not running", flush=True)  # noqa: T201
        live = self.first_live()
        self.ctl_ok(live, "cluster_status")
        print(flush=True)  # noqa: T201
        self.ctl_ok(live, "list_queues", "name", "type", "leader", "members", "online", "messages")
        for queue in self.queues:
            print(f"\nquorum status of {queue}:", flush=True)  # noqa: T201
            self.cli("rabbitmq-queues", live, "quorum_status", queue)

    def kill(self, node: str) -> None:
        i = self.index(node)
        pid = self.pid(i)
        if pid is None:
            log(f"{self.node_name(i)} is not running")
            return
        log(f"SIGKILL {self.node_name(i)} (pid {pid})")
        os.kill(pid, signal.SIGKILL)
        if not self.wait_gone(pid):
            raise Refused(f"process {pid} survived SIGKILL")

    def restart(self, node: str) -> None:
        i = self.index(node)
        self.cookie_required()
        self.start(i)
        self.wait(i)
        deadline = time.monotonic() + self.timeout_s
        while not self.clustered(i):
            if time.monotonic() >= deadline:
                raise Refused(f"{self.node_name(i)} did not rejoin the cluster")
            time.sleep(1)

    def tool(self, tool: str, node: str, *args: str) -> int:
        """``ctl``/``queues NODE ARGS``: NODE may be "any" for the first running node."""
        self.cookie_required()
        i = self.first_live() if node == "any" else self.index(node)
        return self.cli(tool, i, *args)


def bin_dir() -> Path:
    """Where the real scripts are, not Debian's /usr/sbin wrappers: those ``su rabbitmq``, which
    resets HOME and would hand our nodes the system node's cookie."""
    for candidate in (os.environ.get("RABBITMQ_BIN_DIR", ""), "/usr/lib/rabbitmq/bin"):
        if candidate and os.access(Path(candidate) / "rabbitmq-server", os.X_OK):
            return Path(candidate)
    found = shutil.which("rabbitmq-server")
    if not found:
        raise Refused("rabbitmq-server not found: apt-get install rabbitmq-server")
    return Path(os.path.realpath(found)).parent


def signal_quietly(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except OSError:
        pass


def usage() -> NoReturn:
    usage_exit(__doc__ or "")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        usage()
    command, rest = args[0], args[1:]
    nodes = Nodes()
    try:
        if command == "up":
            nodes.up()
        elif command == "down":
            nodes.down()
        elif command == "status":
            nodes.status()
        elif command == "urls":
            print(nodes.urls())  # noqa: T201 - the command's output
        elif command == "kill" and len(rest) == 1:
            nodes.kill(rest[0])
        elif command == "restart" and len(rest) == 1:
            nodes.restart(rest[0])
        elif command == "ctl" and len(rest) >= 2:
            return nodes.tool("rabbitmqctl", *rest)
        elif command == "queues" and len(rest) >= 2:
            return nodes.tool("rabbitmq-queues", *rest)
        else:
            usage()
    except Refused as exc:
        log(f"error: {exc}")
        return 1
    return 0


# --------------------------------------------------------------------------- what tests hold


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

        Two test runs at once (or a developer's ``python -m harness.rabbitmq_cluster up``) then never
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
        # Not from Django settings: the chaos run drives clusters before it sets Django up.
        return command_run(
            [sys.executable, "-m", "harness.rabbitmq_cluster", *args],
            env=self.env,
            timeout=timeout or self.timeout,
            cwd=REPO,
        )

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


if __name__ == "__main__":
    sys.exit(main())
