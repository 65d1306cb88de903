"""Wait, bounded, until something holds: the one poll loop of the tests, the bench and the chaos run.

``poll_until`` returns the first truthy value of its predicate and raises ``PollTimeout`` (an
``AssertionError``, so a test fails rather than errs) when time runs out; ``eventually`` says
whether the predicate became true. Both ask at least once, and once more at the deadline.
"""

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class PollTimeout(AssertionError):
    """The predicate did not hold within the timeout; the message says what was awaited."""


def poll_until(
    predicate: Callable[[], T],
    *,
    timeout: float,
    interval: float = 0.2,
    what: str = "",
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``predicate`` every ``interval`` seconds until it returns something truthy; return that.

    Exceptions of the ``ignore`` types count as "not yet" (the last is named in the timeout's
    message); any other propagates.
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            result = predicate()
        except ignore as exc:
            last = exc
        else:
            if result:
                return result
        if time.monotonic() >= deadline:
            error = f" (last error: {last})" if last is not None else ""
            raise PollTimeout(f"timed out after {timeout}s waiting for {what or predicate}{error}")
        time.sleep(interval)


def eventually(predicate: Callable[[], object], *, timeout: float, interval: float = 0.5) -> bool:
    """Whether ``predicate`` became true within ``timeout`` seconds; an exception counts as not yet."""
    try:
        poll_until(predicate, timeout=timeout, interval=interval, ignore=(Exception,))
    except PollTimeout:
        return False
    return True


def sleep_until(moment: float) -> None:
    """Sleep until ``time.monotonic()`` reaches ``moment`` (not at all if it has)."""
    delay = moment - time.monotonic()
    if delay > 0:
        time.sleep(delay)
