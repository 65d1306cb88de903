"""``Nodes``: the work of every command (starting, waiting, stopping, reporting)."""

import json
import os
import pwd
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

from harness.clusters import private_dir_claim, private_dir_remove
from harness.ports import port_in_use
from harness.postgres_cluster import files, install, procs
from harness.postgres_cluster.settings import HOST, Refused, Settings, is_root, log

CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
RUN_USER = "postgres"  # who runs etcd, Patroni and PostgreSQL when we are root
POSTGRES_EXES = ("/usr/lib/postgresql/*/bin/*",)


def tail(path: Path, lines: int) -> str:
    return "".join(f"{line}\n" for line in path.read_text(errors="replace").splitlines()[-lines:])


def http_get(url: str, timeout: float = 3) -> str | None:
    """The body of a GET on 127.0.0.1; None when it does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - http://127.0.0.1 only
            return str(response.read().decode())
    except (OSError, ValueError):
        return None


class Member(NamedTuple):
    """A member as Patroni reports it; ``-`` for what it does not know."""

    name: str
    role: str  # leader, sync_standby, replica
    state: str  # running, streaming, creating_replica ... (words joined with '_')
    timeline: str
    lag: str

    @classmethod
    def from_patroni(cls, member: dict[str, Any]) -> "Member":
        fields = [member.get(key) for key in cls._fields]
        return cls(*("-" if field in (None, "") else str(field).replace(" ", "_") for field in fields))

    def __str__(self) -> str:
        return " ".join(self)


class Nodes(Settings):
    """The nodes and etcd of one cluster, as the environment describes them, and what runs of them."""

    def bin_dir(self) -> Path:
        return install.bin_dir(self.bin_dir_text)

    # --- running as the run user ----------------------------------------------------------

    def _as_run_user(self) -> dict[str, Any]:
        """Popen arguments: in the cluster directory (where Patroni starts PostgreSQL too), as
        the run user, with a clean environment (none of the caller's PG*, PATRONI_*, ETCD_*)."""
        kwargs: dict[str, Any] = {
            "cwd": self.dir,
            "env": {
                "PATH": CLEAN_PATH,
                "HOME": str(self.dir),
                "LANG": "C.UTF-8",
                "LC_ALL": "C.UTF-8",
                "PYTHONUNBUFFERED": "1",
            },
        }
        if is_root():
            user = pwd.getpwnam(RUN_USER)
            kwargs.update(
                user=user.pw_uid, group=user.pw_gid, extra_groups=os.getgrouplist(RUN_USER, user.pw_gid)
            )
        return kwargs

    def spawn(self, log_file: Path, argv: list[str]) -> None:
        """Start a daemon as the run user in a session of its own, detached from ours; output to ``log_file``."""
        with log_file.open("ab") as out:
            try:
                subprocess.Popen(  # outlives this command on purpose
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    **self._as_run_user(),
                )
            except OSError as exc:
                raise Refused(f"cannot start {argv[0]}: {exc}") from exc

    def dir_own(self) -> None:
        """The cluster directory belongs to the user that runs the nodes."""
        if not is_root():
            return
        user = pwd.getpwnam(RUN_USER)
        paths = [str(self.dir)]
        for top, dirs, names in os.walk(self.dir):
            paths += [os.path.join(top, name) for name in dirs + names]
        for path in paths:
            try:
                os.chown(path, user.pw_uid, user.pw_gid, follow_symlinks=False)
            except FileNotFoundError:
                pass  # a running node's file, gone since the walk saw it

    @staticmethod
    def psql(*args: str) -> str | None:
        """psql's output, with a clean environment and a bounded connection time; None if it failed."""
        try:
            done = subprocess.run(
                ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", *args],
                env={"PATH": CLEAN_PATH, "LC_ALL": "C.UTF-8", "PGCONNECT_TIMEOUT": "3"},
                capture_output=True,
                text=True,
                timeout=20,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return None
        return done.stdout if done.returncode == 0 else None

    # --- processes ------------------------------------------------------------------------

    def patroni_pid(self, i: int) -> int | None:
        return procs.first_running(str(self.config_file(i)), "patroni")

    def postmaster_pid(self, i: int) -> int | None:
        """A postgres process run with -D <node i's data directory>; the one in postmaster.pid when it is such a process."""
        data = str(self.data_dir(i))
        try:
            first_line = (self.data_dir(i) / "postmaster.pid").read_text().split("\n", 1)[0]
        except OSError:
            first_line = ""
        pid = re.sub(r"\D", "", first_line)
        if pid and procs.process_is(int(pid), "postgres") and data in procs.argv_of(int(pid)):
            return int(pid)
        return procs.first_running(data, "postgres")

    def etcd_pid(self) -> int | None:
        return procs.first_running(f"--data-dir={self.etcd_dir}", "etcd")

    def leftover_postgres_pids(self) -> list[int]:
        """Every PostgreSQL program (postgres and its children, pg_rewind, pg_basebackup, initdb ...)
        working in the cluster directory: Patroni starts them there, children inherit it."""
        patterns = POSTGRES_EXES + ((f"{self.bin_dir_text}/*",) if self.bin_dir_text else ())
        return procs.pids_working_in(self.dir, patterns)

    @staticmethod
    def stop(what: str, pids: list[int]) -> None:
        """SIGTERM, wait (bounded), then SIGKILL."""
        for pid in pids:
            procs.signal_quietly(pid, signal.SIGTERM)
        for pid in pids:
            if not procs.wait_gone(pid, 30):
                log(f"warning: {what} {pid} ignored SIGTERM for 30s; SIGKILL")
                if not procs.kill_and_wait(pid, 10):
                    raise Refused(f"{what} {pid} did not exit")

    @staticmethod
    def kill_one(what: str, pid: int) -> None:
        log(f"SIGKILL {what} (pid {pid})")
        if not procs.kill_and_wait(pid, 10):
            raise Refused(f"process {pid} survived SIGKILL")

    # --- files ----------------------------------------------------------------------------

    def dir_ensure(self) -> None:
        private_dir_claim(self.dir, self.marker)
        self.socket_dir.mkdir(exist_ok=True)
        self.ctl_config.write_text(files.patronictl_config(self))
        self.post_bootstrap.write_text(files.post_bootstrap_script(self, self.bin_dir()))
        self.post_bootstrap.chmod(0o700)

    def config_write(self, i: int) -> None:
        """Write a stopped node's config; for a running one only warn if it would change."""
        config, path = files.patroni_config(self, i, self.bin_dir()), self.config_file(i)
        if self.patroni_pid(i) is not None:
            if not path.is_file() or path.read_text() != config:
                log(
                    f"warning: {self.node_name(i)} runs with another config; 'down' then 'up' to apply this one"
                )
            return
        self.node_dir(i).mkdir(parents=True, exist_ok=True)
        self.node_dir(i).chmod(0o700)
        path.write_text(config)
        path.chmod(0o600)

    def require_cluster(self) -> None:
        if not self.marker.is_file():
            raise Refused(f"no cluster in {self.dir} (run 'up')")

    # --- etcd and Patroni -----------------------------------------------------------------

    def etcd_healthy(self) -> bool:
        return '"health":"true"' in (http_get(f"http://{HOST}:{self.etcd_port}/health", 2) or "")

    def etcd_start(self) -> None:
        pid, peer, etcd_log = self.etcd_pid(), self.etcd_peer_port, self.dir / "etcd.log"
        if pid is not None:
            log(f"etcd already running (pid {pid})")
        else:
            for port in (self.etcd_port, peer):
                if port_in_use(port):
                    raise Refused(f"port {port} is taken by another process; set POSTGRES_CLUSTER_ETCD_PORT")
            log(f"starting etcd (client {HOST}:{self.etcd_port}, peer {peer})")
            etcd_log.touch()
            self.dir_own()
            client, peer_url = f"http://{HOST}:{self.etcd_port}", f"http://{HOST}:{peer}"
            self.spawn(etcd_log, [
                "etcd",
                f"--name={self.name}-etcd",
                f"--data-dir={self.etcd_dir}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster={self.name}-etcd={peer_url}",
                f"--initial-cluster-token={self.name}-{self.etcd_port}",
                "--initial-cluster-state=new",
                "--logger=zap",
                "--log-outputs=stderr",
            ])  # fmt: skip
        deadline = time.monotonic() + self.timeout_s
        while not self.etcd_healthy():
            if self.etcd_pid() is None or time.monotonic() >= deadline:
                if etcd_log.is_file():
                    sys.stderr.write(tail(etcd_log, 20))
                raise Refused(f"etcd did not become healthy within {self.timeout_s}s (log: {etcd_log})")
            time.sleep(0.3)

    def node_start(self, i: int) -> None:
        name = self.node_name(i)
        pid = self.patroni_pid(i)
        if pid is not None:
            log(f"{name}: Patroni already running (pid {pid})")
            return
        if self.postmaster_pid(i) is None:
            for port in (self.pg_port(i), self.api_port(i)):
                if port_in_use(port):
                    raise Refused(
                        f"port {port} is taken by another process; set POSTGRES_CLUSTER_PG_PORT / POSTGRES_CLUSTER_API_PORT"
                    )
        if not self.config_file(i).is_file():
            self.config_write(i)
        log(f"starting {name} (postgres {HOST}:{self.pg_port(i)}, REST API {self.api_port(i)})")
        postgres_log = self.node_dir(i) / "postgresql.log"
        postgres_log.touch()
        self.dir_own()
        # Patroni's own log goes to patroni.log (log.dir); its stderr, which PostgreSQL inherits
        # (logging_collector off), to postgresql.log.
        self.spawn(postgres_log, ["patroni", str(self.config_file(i))])

    def node_log_tail(self, i: int) -> None:
        for path in (self.node_dir(i) / "patroni.log", self.node_dir(i) / "postgresql.log"):
            if path.is_file() and path.stat().st_size > 0:
                sys.stderr.write(f"--- {path}\n{tail(path, 15)}")

    # --- the cluster's state --------------------------------------------------------------

    def members(self) -> list[Member] | None:
        """Every member, from the first Patroni REST API that answers (all read the same DCS);
        None when none answers."""
        for i in self.nodes:
            body = http_get(f"http://{HOST}:{self.api_port(i)}/cluster", 2)
            if body is None:
                continue
            try:
                state = json.loads(body)
            except ValueError:
                continue
            if isinstance(state, dict):
                return [Member.from_patroni(member) for member in state.get("members", [])]
        return None

    def leader(self) -> str | None:
        """The member holding the leader key (whatever its state), from the DCS."""
        return next((m.name for m in self.members() or [] if m.role == "leader"), None)

    def replication_state(self, i: int) -> list[str] | None:
        """``NAME STATE SYNC_STATE`` of every standby connected to the primary on node i."""
        output = self.psql(
            "-h", HOST, "-p", str(self.pg_port(i)), "-U", "postgres", "-d", "postgres", "-At",
            "-c", "SELECT application_name || ' ' || state || ' ' || sync_state FROM pg_stat_replication",
        )  # fmt: skip
        return None if output is None else output.splitlines()

    def problem(self, want: Iterable[int] = ()) -> str | None:
        """Why the cluster is not ready yet, None when it is: a running leader that takes writes
        through the multi-host URL and, in synchronous mode, a synchronous standby streaming from
        it; and every node of ``want`` streams from the leader."""
        members = self.members()
        if members is None:
            return "no Patroni REST API answers with the cluster state"
        leader = next((m.name for m in members if m.role == "leader" and m.state == "running"), None)
        if leader is None:
            return "no running leader"
        streaming = self.replication_state(int(leader.removeprefix("p")))
        if streaming is None:
            return f"leader {leader} does not answer"
        if self.sync_wanted:
            sync = next((m.name for m in members if m.role == "sync_standby" and m.state == "running"), None)
            if sync is None:
                return "no synchronous standby"
            if f"{sync} streaming sync" not in streaming:
                return f"sync standby {sync} does not stream synchronously from {leader} yet"
        for i in want:
            name = self.node_name(i)
            if name == leader:
                continue
            if not any(line.startswith(f"{name} streaming ") for line in streaming):
                return f"{name} does not stream from {leader} yet"
            if not any(m.name == name and m.state == "running" and m.lag.isdigit() for m in members):
                return f"Patroni does not report {name} as a running replica yet"
        if (self.psql(self.conninfo(), "-At", "-c", "SELECT pg_is_in_recovery()") or "").strip() != "f":
            return "the multi-host URL does not reach a writable primary yet"
        return None

    def wait_ready(self, want: Iterable[int] = ()) -> None:
        """Wait (bounded) until ``problem`` has nothing to say."""
        want = tuple(want)
        deadline = time.monotonic() + self.timeout_s
        while (reason := self.problem(want)) is not None:
            if time.monotonic() >= deadline:
                for i in self.nodes:
                    self.node_log_tail(i)
                raise Refused(f"cluster not ready after {self.timeout_s}s: {reason}")
            time.sleep(0.5)

    def node_index(self, arg: str) -> int:
        """``p2``, ``2`` or ``leader``: 2."""
        if arg == "leader":
            leader = self.leader()
            if leader is None:
                raise Refused("there is no leader right now")
            arg = leader
        return self.index(arg)

    # --- the commands ---------------------------------------------------------------------

    def up(self) -> None:
        self.check()
        install.packages_ensure()
        self.dir_ensure()
        for i in self.nodes:
            self.config_write(i)
        self.dir_own()
        self.etcd_start()
        for i in self.nodes:
            self.node_start(i)
        self.wait_ready(self.nodes)
        log(
            f"cluster {self.name} of {len(self.nodes)} nodes is up in {self.dir} (leader {self.leader() or ''})"
        )
        print(self.url())  # noqa: T201 - the command's output

    def down(self) -> None:
        # Patroni stops its PostgreSQL on SIGTERM; all at once, so no replica bothers to promote.
        pids = []
        for i in self.nodes:
            pid = self.patroni_pid(i)
            if pid is not None:
                log(f"stopping {self.node_name(i)} (Patroni pid {pid})")
                pids.append(pid)
        self.stop("Patroni", pids)
        # PostgreSQL left behind by a killed Patroni (and its children): an immediate stop is
        # fine, the data goes anyway.
        leftovers = self.leftover_postgres_pids()
        if leftovers:
            log(f"killing {len(leftovers)} leftover PostgreSQL processes")
            for pid in leftovers:
                procs.signal_quietly(pid, signal.SIGKILL)
            for pid in leftovers:
                if not procs.wait_gone(pid, 10):
                    raise Refused(f"process {pid} survived SIGKILL")
        etcd = self.etcd_pid()
        if etcd is not None:
            log(f"stopping etcd (pid {etcd})")
            self.stop("etcd", [etcd])
        private_dir_remove(self.dir, self.marker, log)
        log("cluster is down")

    def status(self) -> None:
        self.require_cluster()

        def say(line: str = "") -> None:
            print(line, flush=True)  # noqa: T201 - the command's output; flushed before patronictl's

        for i in self.nodes:
            patroni, postgres = self.patroni_pid(i), self.postmaster_pid(i)
            say(
                f"{self.node_name(i)}: patroni {patroni or 'not running'}, postgres {postgres or 'not running'}"
                f" (port {self.pg_port(i)}, REST API {self.api_port(i)})"
            )
        say(f"etcd: {self.etcd_pid() or 'not running'} (port {self.etcd_port})")
        say()
        try:
            listed = subprocess.run(
                ["patronictl", "-c", str(self.ctl_config), "list"],
                timeout=30,
                check=False,
                **self._as_run_user(),
            ).returncode
        except subprocess.TimeoutExpired:
            listed = 124
        if listed != 0:
            log("warning: patronictl list failed")
        say()
        members = self.members_required()
        say(f"leader: {','.join(m.name for m in members if m.role == 'leader') or 'none'}")
        say(f"sync_standby: {','.join(m.name for m in members if m.role == 'sync_standby') or 'none'}")

    def members_required(self) -> list[Member]:
        members = self.members()
        if members is None:
            raise Refused("no Patroni REST API answers with the cluster state (Patroni or etcd down?)")
        return members

    def members_print(self) -> None:
        self.require_cluster()
        for member in self.members_required():
            print(member)  # noqa: T201 - the command's output

    def leader_print(self) -> None:
        self.require_cluster()
        leader = self.leader()
        if leader is None:
            raise Refused("there is no leader right now")
        print(leader)  # noqa: T201 - the command's output

    def kill(self, node: str) -> None:
        """SIGKILL the node's postmaster only; its Patroni lives on."""
        self.require_cluster()
        i = self.node_index(node)
        pid = self.postmaster_pid(i)
        if pid is None:
            log(f"{self.node_name(i)}: postgres is not running")
            return
        self.kill_one(f"{self.node_name(i)}'s postmaster", pid)

    def kill_patroni(self, node: str) -> None:
        """SIGKILL the node's Patroni first, so it cannot react to its postgres dying; then the postmaster."""
        self.require_cluster()
        i = self.node_index(node)
        pid = self.patroni_pid(i)
        if pid is not None:
            self.kill_one(f"{self.node_name(i)}'s Patroni", pid)
        pid = self.postmaster_pid(i)
        if pid is not None:
            self.kill_one(f"{self.node_name(i)}'s postmaster", pid)

    def restart(self, node: str) -> None:
        self.require_cluster()
        self.check()
        i = self.node_index(node)
        if self.etcd_pid() is None:
            self.etcd_start()
        self.node_start(i)
        self.wait_ready((i,))
        name = self.node_name(i)
        back = next((f"{m.role} {m.state}" for m in self.members() or [] if m.name == name), "")
        log(f"{name} is back: {back}")

    def wait(self) -> None:
        self.require_cluster()
        self.wait_ready()
        log(f"leader: {self.leader() or ''}")
