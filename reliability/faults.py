"""Fault points for the failure tests: kill this process at a named place in the code.

Enabled only when ``settings.RELIABILITY_FAULT_INJECTION`` is true, which settings
refuse in production. ``settings.RELIABILITY_FAULTS`` names the points, e.g.
``consume.after_commit=kill:2,relay.after_publish=kill:1``: the first two times
any process passes ``consume.after_commit`` it is killed with SIGKILL. The action
``raise`` raises ``RuntimeError`` instead (a handler that keeps failing);
``sleep15`` sleeps 15 seconds (a handler that outlives the broker's consumer timeout). The count is
shared across processes through marker files in ``settings.RELIABILITY_FAULT_DIR``
(created with O_EXCL), so "kill once" means once for the whole test run.
"""

import logging
import os
import signal
import time
from pathlib import Path

from reliability.conf import settings

logger = logging.getLogger(__name__)


def _faults() -> dict[str, tuple[str, int]]:
    parsed: dict[str, tuple[str, int]] = {}
    for item in settings.RELIABILITY_FAULTS.split(","):
        if not item.strip():
            continue
        point, _, spec = item.strip().partition("=")
        action, _, times = spec.partition(":")
        parsed[point] = (action, int(times or "1"))
    return parsed


def _claim(point: str, times: int) -> bool:
    directory = Path(settings.RELIABILITY_FAULT_DIR)
    directory.mkdir(parents=True, exist_ok=True)
    for n in range(times):
        try:
            fd = os.open(directory / f"{point}.{n}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            continue
        os.close(fd)
        return True
    return False


def fault_point(point: str, *, message_id: object = None) -> None:
    """Act out the fault configured for ``point``, if any (a no-op in production)."""
    if not settings.RELIABILITY_FAULT_INJECTION:
        return
    fault = _faults().get(point)
    if fault is None:
        return
    action, times = fault
    if not _claim(point, times):
        return
    if action.startswith("sleep"):
        seconds = float(action.removeprefix("sleep") or "1")
        logger.warning("fault point %s: sleeping %.1fs (message %s)", point, seconds, message_id)
        time.sleep(seconds)
        return
    if action == "raise":
        raise RuntimeError(f"fault point {point}: injected failure (message {message_id})")
    if action == "kill":
        logger.warning(
            "fault point %s: killing process %d with SIGKILL (message %s)", point, os.getpid(), message_id
        )
        os.kill(os.getpid(), signal.SIGKILL)
    raise RuntimeError(f"fault point {point}: unknown action {action!r}")
