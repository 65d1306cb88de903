"""py-spy profiles of the bench's processes (``python -m bench.run --profile DIR``).

While the exactly-once HTTP leg runs, one ``py-spy record --subprocesses`` per process kind
(gunicorn's master and its workers, a Celery worker and its pool children, beat) samples
every thread that holds the GIL (``--gil``: CPU, not waiting on a socket) and writes the
collapsed stacks to ``DIR/<kind>.txt``. ``DIR/<kind>.summary.txt`` then gives, for each
kind, the share of samples under each function (inclusive) and the share each function ran
itself (leaf), so "where does a request's CPU go" is read off one file.

py-spy is a dev requirement; it needs ptrace (root, or ``kernel.yama.ptrace_scope=0``).
"""

import collections
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

RATE_HZ = 200
TOP = 40


class Profiles:
    """Record every process kind of ``groups`` (kind -> root pids) until the block ends."""

    def __init__(self, directory: Path, groups: Mapping[str, list[int]]) -> None:
        self.directory = directory
        self.groups = groups
        self.recorders: list[tuple[str, subprocess.Popen[bytes]]] = []

    def __enter__(self) -> "Profiles":
        py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
        if py_spy is None:
            raise RuntimeError("--profile needs py-spy: .venv/bin/pip install py-spy")
        self.directory.mkdir(parents=True, exist_ok=True)
        for kind, pids in self.groups.items():
            for pid in pids:
                output = self.directory / f"{kind}-{pid}.txt"
                command = [py_spy, "record", "--pid", str(pid), "--subprocesses", "--gil", "--nonblocking"]
                command += ["--rate", str(RATE_HZ), "--format", "raw", "--output", str(output)]
                log = (self.directory / f"{kind}-{pid}.log").open("wb")
                self.recorders.append((kind, subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)))
        return self

    def __exit__(self, *_exc: object) -> None:
        for _, recorder in self.recorders:
            recorder.send_signal(signal.SIGINT)
        for _, recorder in self.recorders:
            try:
                recorder.wait(timeout=30)
            except subprocess.TimeoutExpired:
                recorder.kill()
        for kind in self.groups:
            stacks = [path for path in self.directory.glob(f"{kind}-*.txt") if path.stat().st_size]
            if stacks:
                (self.directory / f"{kind}.summary.txt").write_text(summary(stacks))


def _function(frame: str) -> str:
    """``name (path/file.py:123)`` -> ``name (path/file.py)``: a function, whatever line ran."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]})" if where else name


def summary(paths: list[Path]) -> str:
    inclusive: collections.Counter[str] = collections.Counter()
    leaf: collections.Counter[str] = collections.Counter()
    total = 0
    for path in paths:
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            frames = [_function(frame) for frame in stack.split(";")]
            # The first frame is the process (and thread); the rest are Python functions.
            total += count
            leaf[frames[-1]] += count
            for function in set(frames[1:]):
                inclusive[function] += count
    lines = [f"{total} samples with the GIL held at {RATE_HZ} Hz ({total / RATE_HZ:.1f} CPU-seconds)", ""]
    for title, counter in (("inclusive (the function and what it called)", inclusive), ("self", leaf)):
        lines.append(title)
        lines += [f"  {100 * n / total:5.1f}%  {function}" for function, n in counter.most_common(TOP)]
        lines.append("")
    return "\n".join(lines)
