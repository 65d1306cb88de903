"""Where the CPU went during a measurement, from /proc (Linux only; empty elsewhere).

A snapshot records the user+system time of every process; the difference of two
snapshots is attributed to groups: the Celery subprocesses (by process group),
the bench and its producers, the PostgreSQL backends serving the bench database,
the rest of PostgreSQL (background processes, other databases), RabbitMQ (the whole node: other vhosts too),
and everything else on the machine. A process that exited between the two
snapshots is missed, so the groups are lower bounds.
"""

import os
from collections.abc import Iterable
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
    # fields[0] is field 3 (state): ppid=4, pgrp=5, utime=14, stime=15.
    return ProcessTimes(
        comm=comm,
        ppid=int(fields[1]),
        pgrp=int(fields[2]),
        ticks=int(fields[11]) + int(fields[12]),
        cmdline=cmdline,
    )


def snapshot() -> Snapshot:
    processes: dict[int, ProcessTimes] = {}
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
    before: Snapshot, after: Snapshot, *, celery_groups: Iterable[int], bench_pid: int, database: str
) -> dict[str, float]:
    """Return CPU seconds per group between the two snapshots, and the machine's busy share."""
    groups = set(celery_groups)
    seconds: dict[str, float] = dict.fromkeys(
        ["celery", "bench+producers", "postgres:" + database, "postgres:rest", "rabbitmq", "other"], 0.0
    )
    for pid, now in after.processes.items():
        then = before.processes.get(pid)
        delta = now.ticks - (then.ticks if then is not None and then.comm == now.comm else 0)
        if delta <= 0:
            continue
        if now.pgrp in groups:
            group = "celery"
        elif pid == bench_pid or now.ppid == bench_pid:
            group = "bench+producers"
        elif now.comm == "postgres" or now.cmdline.startswith("postgres"):
            group = f"postgres:{database}" if f" {database} " in now.cmdline else "postgres:rest"
        elif now.comm in {"beam.smp", "erl_child_setup", "inet_gethost", "epmd"}:
            group = "rabbitmq"
        else:
            group = "other"
        seconds[group] += delta / TICK
    total = after.total_ticks - before.total_ticks
    seconds["machine_busy_share"] = (after.busy_ticks - before.busy_ticks) / total if total > 0 else 0.0
    return seconds
