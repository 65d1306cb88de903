"""What the private clusters share: their errors, their command lines' usage and directory, leftovers.

A private cluster (``RabbitCluster.private()``, ``PostgresCluster.private()``) is named after
the pid of the process that made it (``beans-t<pid>``) and keeps its state in
``$TMPDIR/beans-t<pid>-<kind>``; ``stale_private_dirs`` finds those of processes now gone.
A cluster directory carries a marker file: ``up`` takes only an empty directory or a marked one,
``down`` removes only a marked one.
"""

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from harness.processes import orphans


class ClusterError(RuntimeError):
    """A cluster command failed; the message carries its output."""


class Refused(Exception):
    """A step of a cluster's command line failed; it prints ``error: <message>`` and exits 1."""


def usage_exit(doc: str) -> NoReturn:
    """Print the usage (the first two paragraphs of a command line's docstring) and exit 2."""
    usage = "\n\n".join(doc.split("\n\n")[:2])
    sys.stderr.write("\n".join(line.replace("    ", "  ", 1) for line in usage.splitlines()) + "\n\n")
    raise SystemExit(2)


def private_dir_claim(directory: Path, marker: Path) -> None:
    """Make ``directory`` (private, marked as a cluster's); refuse one that holds anything else."""
    if directory.is_dir() and not marker.is_file() and any(directory.iterdir()):
        raise Refused(f"{directory} exists and is not a cluster directory of this script; refusing to use it")
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    marker.touch()


def private_dir_remove(directory: Path, marker: Path, log: Callable[[str], None]) -> None:
    """Remove a cluster's ``directory``, if it is marked as one; warn about one that is not."""
    if not directory.is_dir():
        return
    if marker.is_file():
        shutil.rmtree(directory)
    else:
        log(f"warning: {directory} is not a cluster directory of this script; not removing it")


def stale_private_dirs(suffix: str) -> list[tuple[str, Path]]:
    """(name, directory) of the private clusters (``beans-t<pid>-<suffix>``) whose test process is gone."""
    stale = []
    for directory in sorted(Path(tempfile.gettempdir()).glob(f"beans-t*-{suffix}")):
        name = directory.name.removesuffix(f"-{suffix}")
        if orphans([name.removeprefix("beans-t")], r"(\d+)"):
            stale.append((name, directory))
    return stale


def command_run(argv: list[str], *, env: dict[str, str], timeout: float, cwd: Path | None = None) -> str:
    """Run a cluster's control command; its output, or ClusterError with what it printed."""
    what = " ".join([Path(argv[0]).name, *argv[1:]])
    try:
        completed = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=timeout, check=False, cwd=cwd
        )
    except subprocess.TimeoutExpired as exc:
        raise ClusterError(f"{what} timed out after {exc.timeout}s") from exc
    if completed.returncode != 0:
        raise ClusterError(f"{what} exited {completed.returncode}:\n{completed.stdout}\n{completed.stderr}")
    return completed.stdout
