"""Where the CPU went during a measurement, from /proc (Linux only; empty elsewhere).

A snapshot records the user+system time of every process; the difference of two
snapshots is attributed to groups: the Celery subprocesses (by process group),
the bench and its producers, the PostgreSQL backends serving the bench database,
the rest of PostgreSQL (background processes, other databases), RabbitMQ (the whole node: other vhosts too),
Redis (the whole server), and everything else on the machine. A process that exited between the two
snapshots is missed, so the groups are lower bounds (``snapshot(previous)`` narrows that), with one
exception: PostgreSQL backends that exited are counted from their parent, the postmaster, which
reaps them (its children's time), as ``postgres:exited``. A client that connects anew for every
task leaves most of its database CPU there: Celery's Django fixup closes the connections before
and after every task (``CELERY_DB_REUSE_MAX`` unset), so a worker that runs one task per message
has a backend that lives for one task, which no snapshot sees. The postmaster does not say which
database its children served: ``bench/figures.py`` splits ``postgres:exited`` by the sessions each
database opened (``pg_stat_database``).
"""

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PROC = Path("/proc")


@dataclass(frozen=True)
class ProcessTimes:
    comm: str
    ppid: int
    pgrp: int
    ticks: int
    cmdline: str
    child_ticks: int = 0  # of its children that exited and were waited for (cutime + cstime)


@dataclass(frozen=True)
class Snapshot:
    processes: dict[int, ProcessTimes]
    busy_ticks: int
    total_ticks: int


def _read(pid: int) -> ProcessTimes | None:
    try:
        stat = (PROC / str(pid) / "stat").read_text()
        cmdline = (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    # comm is in parentheses and may contain spaces: split after the last ')'.
    comm = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state): ppid=4, pgrp=5, utime=14, stime=15, cutime=16, cstime=17.
    return ProcessTimes(
        comm=comm,
        ppid=int(fields[1]),
        pgrp=int(fields[2]),
        ticks=int(fields[11]) + int(fields[12]),
        cmdline=cmdline,
        child_ticks=int(fields[13]) + int(fields[14]),
    )


def process_seconds(pid: int) -> float:
    """CPU seconds process ``pid`` (all its threads) has used so far; 0 when it is gone."""
    times = _read(pid)
    return times.ticks / TICK if times is not None else 0.0


def snapshot(previous: Snapshot | None = None) -> Snapshot:
    """The CPU times of every process now, and of the machine.

    With ``previous`` (an earlier snapshot of the same measurement), a process that has exited
    since keeps the times it had then: snapshots taken every second while a measurement runs
    count a process that exits before its end (a database connection recycled after
    ``CONN_MAX_AGE``) up to its last second, instead of missing it.
    """
    processes: dict[int, ProcessTimes] = dict(previous.processes) if previous is not None else {}
    if not PROC.is_dir():
        return Snapshot(processes, 0, 0)
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            times = _read(int(entry.name))
            if times is not None:
                processes[int(entry.name)] = times
    values = [int(v) for v in (PROC / "stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return Snapshot(processes, sum(values) - idle, sum(values))


def attribute(
    before: Snapshot,
    after: Snapshot,
    *,
    celery_groups: Iterable[int] = (),
    bench_pid: int,
    database: str,
    named_groups: Mapping[str, Iterable[int]] | None = None,
    backends: Mapping[int, str] | None = None,
) -> dict[str, float]:
    """Return CPU seconds per group between the two snapshots, and the machine's busy share.

    ``named_groups`` (name -> process groups) splits the subprocesses by kind ("gunicorn",
    "worker", ...) where ``celery_groups`` lumps them as "celery"; with it the bench's own
    process is "bench" (no producers then). ``backends`` (backend pid -> name, from
    ``pg_stat_activity.application_name``) splits the bench database's PostgreSQL backends
    into ``postgres:<name>``; its unnamed backends stay ``postgres:<database>``. Backends that
    exited meanwhile, of any database, are ``postgres:exited`` (the postmaster's children's time).
    """
    groups = set(celery_groups)
    named = {pgrp: name for name, pgrps in (named_groups or {}).items() for pgrp in pgrps}
    bench = "bench" if named_groups else "bench+producers"
    kinds = list(named_groups) if named_groups else ["celery"]
    backend_groups = sorted({f"postgres:{name}" for name in (backends or {}).values()})
    seconds: dict[str, float] = dict.fromkeys(
        [
            *kinds,
            bench,
            *backend_groups,
            f"postgres:{database}",
            "postgres:exited",
            "postgres:rest",
            "rabbitmq",
            "redis",
            "other",
        ],
        0.0,
    )
    for pid, now in after.processes.items():
        then = before.processes.get(pid)
        same = then is not None and then.comm == now.comm
        if now.comm == "postgres" and _is_postmaster(now, after) and same:
            assert then is not None
            seconds["postgres:exited"] += max(now.child_ticks - then.child_ticks, 0) / TICK
        delta = now.ticks - (then.ticks if same and then is not None else 0)
        if delta <= 0:
            continue
        if now.pgrp in named:
            group = named[now.pgrp]
        elif now.pgrp in groups:
            group = "celery"
        elif pid == bench_pid or now.ppid == bench_pid:
            group = bench
        elif now.comm == "postgres" or now.cmdline.startswith("postgres"):
            if f" {database} " not in now.cmdline:
                group = "postgres:rest"
            elif backends and pid in backends:
                group = f"postgres:{backends[pid]}"
            else:
                group = f"postgres:{database}"
        elif now.comm in {"beam.smp", "erl_child_setup", "inet_gethost", "epmd"}:
            group = "rabbitmq"
        elif now.comm == "redis-server":
            group = "redis"
        else:
            group = "other"
        seconds[group] = seconds.get(group, 0.0) + delta / TICK
    total = after.total_ticks - before.total_ticks
    if not seconds["postgres:exited"]:
        del seconds["postgres:exited"]  # no backend exited: nothing to say
    seconds["machine_busy_share"] = (after.busy_ticks - before.busy_ticks) / total if total > 0 else 0.0
    return seconds


def _is_postmaster(times: ProcessTimes, snapshot: Snapshot) -> bool:
    """The PostgreSQL server's main process: a ``postgres`` whose parent is not one."""
    parent = snapshot.processes.get(times.ppid)
    return parent is None or parent.comm != "postgres"
