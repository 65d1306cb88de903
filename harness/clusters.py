"""What the private clusters share: their error, running their control command, finding leftovers.

A private cluster (``RabbitCluster.private()``, ``PostgresCluster.private()``) is named after
the pid of the process that made it (``beans-t<pid>``) and keeps its state in
``$TMPDIR/beans-t<pid>-<kind>``; ``stale_private_dirs`` finds those of processes now gone.
"""

import subprocess
import tempfile
from pathlib import Path

from harness.processes import orphans


class ClusterError(RuntimeError):
    """A cluster command failed; the message carries its output."""


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
