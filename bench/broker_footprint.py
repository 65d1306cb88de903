"""Measure what one vhost with one worker and beat costs RabbitMQ (README, "Broker footprint").

Usage, from the repository root (needs root or the rabbitmq user: the counts come from
``rabbitmqctl``; the vhost is made and deleted through ``harness.broker_admin``)::

    .venv/bin/python -m bench.broker_footprint [--concurrency 2] [--trades 200]
                                               [--native-delayed-delivery] [--json]

In a throwaway vhost (``footprint-<pid>``) and database (``beans_footprint_<pid>``), both
deleted at the end whatever happens (a leftover of a run that was killed, recognised by its
dead pid, is deleted at the start): the topology is declared (``manage.py broker_setup``),
then ``celery worker -c N`` and ``celery beat`` start, a few trades are placed so that every
publishing path has opened its connection, and once the pipeline is idle the script counts,
in that vhost, queues (by type), exchanges, connections (attributed to the worker's main
process, its pool children and beat through their client ports), channels and consumers,
and on the node the file descriptors and sockets used (``rabbitmqctl status``) before the
vhost existed, with the topology only, with the processes running, after they stopped, and
after the vhost was deleted. The node's descriptors are node-wide: anything else using the
node meanwhile shows up in the differences, so the script reports the other vhosts it saw.
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import suppress
from typing import Any

from harness.broker_admin import broker_admin
from harness.environment import scrubbed_env
from harness.polling import poll_until
from harness.processes import REPO as ROOT
from harness.processes import orphans, pool_children
from project.environment import broker_url, broker_user, database_drop, database_recreate, database_url

AMQP_PORT = 5672
REDIS_URL = "redis://127.0.0.1:6379/10"  # chaos 11, bench 12, tests 13 and 15, bench/ids.py 14
PREFIX_VHOST = "footprint-"
PREFIX_DB = "beans_footprint_"


def say(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def run(
    argv: list[str], *, env: dict[str, str] | None = None, timeout: float = 120, check: bool = True
) -> str:
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT, check=False
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stdout}{done.stderr}")
    return done.stdout


def ctl(*args: str) -> str:
    return run(["rabbitmqctl", "-q", *args])


def ctl_json(*args: str) -> Any:
    return json.loads(ctl(*args, "--formatter", "json") or "[]")


def stale_reap() -> list[str]:
    """Delete the vhosts and databases of earlier runs whose process is gone."""
    notes = []
    for vhost in orphans(broker_admin().vhosts(), re.escape(PREFIX_VHOST) + r"(\d+)"):
        broker_admin().vhost_delete(vhost)
        notes.append(f"deleted vhost {vhost} left by an earlier run")
    databases = run(["psql", "-X", "-d", database_url("postgres"), "-Atc", "SELECT datname FROM pg_database"])
    for name in orphans(databases.split(), re.escape(PREFIX_DB) + r"(\d+)"):
        database_drop(database_url(name))
        notes.append(f"dropped database {name} left by an earlier run")
    return notes


def node_fds() -> dict[str, int]:
    status = ctl_json("status")
    fds = status["file_descriptors"]
    return {
        "total_used": int(fds["total_used"]),
        "total_limit": int(fds["total_limit"]),
        "sockets_used": int(fds["sockets_used"]),
        "sockets_limit": int(fds["sockets_limit"]),
    }


def other_vhosts(mine: str) -> list[str]:
    return sorted(v for v in broker_admin().vhosts() if v not in {"/", mine})


def client_ports() -> dict[int, int]:
    """Local port -> pid of every established client connection to the broker's AMQP port."""
    out = run(["ss", "-Htnp", "state", "established", f"( dport = :{AMQP_PORT} )"])
    ports = {}
    for line in out.splitlines():
        fields = line.split()
        # Recv-Q, Send-Q, local address:port, peer address:port, process.
        local = next((f for f in fields if ":" in f and f.rsplit(":", 1)[1].isdigit()), None)
        pid = re.search(r"pid=(\d+)", line)
        if local and pid:
            ports[int(local.rsplit(":", 1)[1])] = int(pid.group(1))
    return ports


def stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def vhost_figures(vhost: str, roles: dict[int, str]) -> dict[str, Any]:
    queues = ctl_json("list_queues", "-p", vhost, "name", "type", "consumers")
    exchanges = ctl_json("list_exchanges", "-p", vhost, "name", "type")
    connections = [
        c
        for c in ctl_json("list_connections", "pid", "vhost", "peer_port", "channels")
        if c["vhost"] == vhost
    ]
    channels = [
        c
        for c in ctl_json("list_channels", "connection", "vhost", "consumer_count", "confirm")
        if c["vhost"] == vhost
    ]
    consumers = ctl_json("list_consumers", "-p", vhost, "queue_name")
    ports = client_ports()
    by_role: dict[str, dict[str, int]] = {}
    detail = []
    for connection in connections:
        role = roles.get(ports.get(int(connection["peer_port"]), -1), "other")
        entry = by_role.setdefault(role, {"connections": 0, "channels": 0})
        entry["connections"] += 1
        entry["channels"] += int(connection["channels"])
        mine = [c for c in channels if c["connection"] == connection["pid"]]
        detail.append(
            {
                "process": role,
                "channels": int(connection["channels"]),
                "consumers": sum(int(c["consumer_count"]) for c in mine),
                "confirm_channels": sum(1 for c in mine if c["confirm"]),
            }
        )
    return {
        "queues": len(queues),
        "queues_by_type": {
            kind: sum(1 for q in queues if q["type"] == kind) for kind in sorted({q["type"] for q in queues})
        },
        "celery_delayed_queues": sum(1 for q in queues if q["name"].startswith("celery_delayed_")),
        "queue_names": sorted(q["name"] for q in queues),
        "exchanges": len(exchanges),
        "exchanges_not_builtin": sum(1 for e in exchanges if e["name"] and not e["name"].startswith("amq.")),
        "exchange_names": sorted(
            e["name"] for e in exchanges if e["name"] and not e["name"].startswith("amq.")
        ),
        "connections": len(connections),
        "channels": len(channels),
        "channels_in_confirm_mode": sum(1 for c in channels if c["confirm"]),
        "consumers": len(consumers),
        "by_process": by_role,
        "connection_detail": sorted(detail, key=lambda d: (d["process"], -d["consumers"], -d["channels"])),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=2, help="worker pool processes (-c)")
    parser.add_argument("--trades", type=int, default=200, help="trades placed to open every publishing path")
    parser.add_argument("--settle", type=float, default=15.0, help="seconds of idle pipeline before counting")
    parser.add_argument(
        "--native-delayed-delivery", action="store_true", help="RELIABILITY_NATIVE_DELAYED_DELIVERY=true"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args()

    vhost, database = f"{PREFIX_VHOST}{os.getpid()}", f"{PREFIX_DB}{os.getpid()}"
    env = {
        **scrubbed_env(),
        "DATABASE_URL": database_url(database),
        "CELERY_BROKER_URL": broker_url(vhost),
        "RELIABILITY_REDIS_URL": REDIS_URL,
        "RELIABILITY_NATIVE_DELAYED_DELIVERY": "true" if args.native_delayed_delivery else "false",
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
    }
    python = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv").exists() else sys.executable
    log_dir = ROOT / ".run" / "footprint"
    log_dir.mkdir(parents=True, exist_ok=True)

    def on_sigterm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_sigterm)
    worker = beat = None
    vhost_made = database_made = False
    figures: dict[str, Any] = {"vhost": vhost, "concurrency": args.concurrency}
    try:
        for note in stale_reap():
            say(note)
        figures["node_before"] = node_fds()
        vhost_made = True
        broker_admin().vhost_add(vhost)
        broker_admin().permissions_set(vhost, broker_user(), ".*", ".*", ".*")
        database_made = True
        database_recreate(env["DATABASE_URL"])
        run([python, "manage.py", "migrate", "--noinput", "-v0"], env=env, timeout=600)
        run([python, "manage.py", "broker_setup"], env=env)
        run([python, "manage.py", "create_accounts", "--count", "4", "--balance", "1000000"], env=env)
        figures["topology_only"] = vhost_figures(vhost, {})
        figures["node_topology_only"] = node_fds()

        def start(name: str, *argv: str) -> subprocess.Popen[bytes]:
            with (log_dir / f"{name}.log").open("wb") as log:
                return subprocess.Popen(
                    [python, "-m", "celery", "-A", "project", *argv],
                    cwd=ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )

        # The worker as README, "Scaling and back-pressure", runs it: every queue, default flags.
        worker = start("worker", "worker", "-l", "warning", "-c", str(args.concurrency), "-n", f"{vhost}@%h")
        beat = start("beat", "beat", "-l", "warning", "--schedule", str(log_dir / "beat-schedule"))
        poll_until(
            lambda: any(
                int(q["consumers"]) for q in ctl_json("list_queues", "-p", vhost, "name", "consumers")
            ),
            timeout=120,
            interval=1,
            what="the worker to consume",
        )
        if args.trades:
            run([python, "manage.py", "place_trades", "--count", str(args.trades), "--beans", "1", "--no-progress"],
                env=env, timeout=300)  # fmt: skip
            poll_until(
                lambda: (
                    json.loads(run([python, "manage.py", "pipeline_status", "--json"], env=env))["trades"][
                        "pending"
                    ]
                    == 0
                ),
                timeout=300,
                interval=1,
                what="the trades to settle",
            )
        time.sleep(args.settle)
        assert worker is not None and beat is not None
        roles = {worker.pid: "worker main process", beat.pid: "beat"}
        roles.update(dict.fromkeys(pool_children(worker.pid), "worker pool child"))
        figures["running"] = vhost_figures(vhost, roles)
        figures["node_running"] = node_fds()
        figures["pool_children"] = len(pool_children(worker.pid))
        figures["other_vhosts_seen"] = other_vhosts(vhost)
        stop(beat)
        stop(worker)
        time.sleep(2)
        figures["node_stopped"] = node_fds()
        broker_admin().vhost_delete(vhost)
        vhost_made = False
        time.sleep(2)
        figures["node_vhost_deleted"] = node_fds()
        figures["other_vhosts_seen"] = sorted({*figures["other_vhosts_seen"], *other_vhosts(vhost)})
    except KeyboardInterrupt:
        say("interrupted: cleaning up")
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop(beat)
        stop(worker)
        if vhost_made:
            with suppress(Exception):
                broker_admin().vhost_delete(vhost)
        if database_made:
            with suppress(Exception):
                database_drop(env["DATABASE_URL"])
    report(figures)
    if args.json:
        say(json.dumps(figures, indent=2))
    return 0


def report(f: dict[str, Any]) -> None:
    before, topology, running = f["node_before"], f["node_topology_only"], f["node_running"]
    stopped, deleted = f["node_stopped"], f["node_vhost_deleted"]
    top, live = f["topology_only"], f["running"]
    say(f"vhost {f['vhost']}, one worker -c {f['concurrency']} ({f['pool_children']} pool children) + beat")
    say(
        f"queues: {live['queues']} {live['queues_by_type']} ({live['celery_delayed_queues']} celery_delayed_*; "
        f"{top['queues']} after broker_setup alone)"
    )
    say(f"  {' '.join(live['queue_names'])}")
    say(f"exchanges: {live['exchanges']} ({live['exchanges_not_builtin']} besides the default and amq.*)")
    say(f"  {' '.join(live['exchange_names'])}")
    say(
        f"connections: {live['connections']}, channels: {live['channels']} "
        f"({live['channels_in_confirm_mode']} in confirm mode), consumers: {live['consumers']}"
    )
    for role, entry in sorted(live["by_process"].items()):
        say(f"  {role}: {entry['connections']} connections, {entry['channels']} channels")
    for d in live["connection_detail"]:
        say(
            f"    {d['process']}: {d['channels']} channels, {d['consumers']} consumers, "
            f"{d['confirm_channels']} channels in confirm mode"
        )
    say(
        "node file descriptors (total / sockets): "
        f"before {before['total_used']}/{before['sockets_used']}, "
        f"topology only {topology['total_used']}/{topology['sockets_used']}, "
        f"running {running['total_used']}/{running['sockets_used']}, "
        f"stopped {stopped['total_used']}/{stopped['sockets_used']}, "
        f"vhost deleted {deleted['total_used']}/{deleted['sockets_used']}; "
        f"limits {before['total_limit']}/{before['sockets_limit']}"
    )
    say(
        f"  -> the vhost's queues {topology['total_used'] - before['total_used']:+d} fds, "
        f"the processes {running['total_used'] - topology['total_used']:+d} fds "
        f"({running['sockets_used'] - topology['sockets_used']:+d} sockets)"
    )
    if f["other_vhosts_seen"]:
        say(
            f"  (other vhosts on the node meanwhile, their use is in these figures: {', '.join(f['other_vhosts_seen'])})"
        )


if __name__ == "__main__":
    sys.exit(main())
