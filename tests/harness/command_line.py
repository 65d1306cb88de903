"""Run a tool's ``main(argv)`` in this process, as its command line would run: exit code, stdout, stderr."""

import io
import os
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from unittest import mock


def command_line_run(main: Callable[[list[str]], int], *argv: str, **env: str) -> tuple[int, str, str]:
    """Call ``main`` with ``argv`` and ``env`` added to the environment; what it returned or exited with."""
    out, err = io.StringIO(), io.StringIO()
    with mock.patch.dict(os.environ, env), redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exit_:
            code = int(exit_.code or 0)
    return code, out.getvalue(), err.getvalue()
