"""Processes found through /proc: by an argument, by the program they run, by the directory they work in.

A cluster's processes are recognised by what they were started with (a config file, a data
directory), never by name alone, so nothing else on the host is ever signalled.
"""

import fnmatch
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

from harness.processes import pid_alive


def _pids() -> Iterator[int]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            yield int(entry.name)


def argv_of(pid: int) -> list[str]:
    """The arguments process ``pid`` was started with; empty when it is gone (or a zombie)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    args = raw.decode(errors="replace").split("\0")
    return args[:-1] if args[-1] == "" else args  # a process that retitled itself may end without NUL


def pids_with_arg(arg: str) -> list[int]:
    """Processes one of whose arguments is exactly ``arg``."""
    return [pid for pid in _pids() if arg in argv_of(pid)]


def runs(argv: list[str], program: str) -> bool:
    """Whether ``argv`` runs ``program``: the basename of argv[0], or of argv[1] for a Python script."""
    if not argv:
        return False
    first = argv[0].rsplit("/", 1)[-1]
    return first == program or (
        first.startswith("python3") and len(argv) > 1 and argv[1].endswith(f"/{program}")
    )


def process_is(pid: int, program: str) -> bool:
    return runs(argv_of(pid), program)


def first_running(arg: str, program: str) -> int | None:
    """The first process that runs ``program`` with the argument ``arg``."""
    return next((pid for pid in pids_with_arg(arg) if process_is(pid, program)), None)


def alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie (a dead postmaster's parent is init, which
    may take its time to reap it)."""
    if not pid_alive(pid):
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return not stat.rsplit(") ", 1)[-1].startswith("Z")


def wait_gone(pid: int, timeout: float = 30) -> bool:
    """Wait (bounded) until process ``pid`` has exited; False if it still runs."""
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)
    return True


def signal_quietly(pid: int, sig: int) -> None:
    """Send ``sig`` to ``pid``; one that has just exited is no error."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def kill_and_wait(pid: int, timeout: float = 10) -> bool:
    """SIGKILL ``pid``; whether it is gone within ``timeout`` seconds."""
    signal_quietly(pid, signal.SIGKILL)
    return wait_gone(pid, timeout)


def pids_working_in(directory: Path, exe_patterns: tuple[str, ...]) -> list[int]:
    """Processes whose working directory is ``directory`` or below and whose executable matches
    one of ``exe_patterns`` (``*`` matches ``/`` too)."""
    found = []
    for pid in _pids():
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
            exe = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            continue
        if (cwd == str(directory) or cwd.startswith(f"{directory}/")) and any(
            fnmatch.fnmatchcase(exe, pattern) for pattern in exe_patterns
        ):
            found.append(pid)
    return found
