"""The one poll loop: what it returns, when it gives up, and what its failure says."""

import itertools
from collections.abc import Callable

from django.test import SimpleTestCase

from harness.polling import PollTimeout, eventually, poll_until


class PollUntilTests(SimpleTestCase):
    def test_returns_the_first_truthy_value(self) -> None:
        answers = iter([0, None, "", "ready"])
        self.assertEqual(poll_until(lambda: next(answers), timeout=5, interval=0), "ready")

    def test_asks_at_least_once_even_with_no_time(self) -> None:
        self.assertTrue(poll_until(lambda: True, timeout=0))

    def test_a_timeout_is_an_assertion_naming_what_was_awaited(self) -> None:
        with self.assertRaisesMessage(PollTimeout, "waiting for the queue to drain"):
            poll_until(lambda: False, timeout=0.05, interval=0.01, what="the queue to drain")
        self.assertTrue(issubclass(PollTimeout, AssertionError), "a test fails, it does not err")

    def test_ignored_errors_count_as_not_yet_and_the_last_is_named(self) -> None:
        calls = itertools.count()

        def settles() -> bool:
            if next(calls) < 2:
                raise ConnectionError("node still booting")
            return True

        self.assertTrue(poll_until(settles, timeout=5, interval=0, ignore=(ConnectionError,)))
        with self.assertRaisesMessage(PollTimeout, "last error: node down"):
            poll_until(
                _raise(ConnectionError("node down")), timeout=0.05, interval=0.01, ignore=(ConnectionError,)
            )

    def test_other_errors_propagate(self) -> None:
        with self.assertRaises(ZeroDivisionError):
            poll_until(lambda: 1 / 0, timeout=5, interval=0, ignore=(ConnectionError,))


class EventuallyTests(SimpleTestCase):
    def test_says_whether_the_predicate_became_true(self) -> None:
        answers = iter([False, True])
        self.assertTrue(eventually(lambda: next(answers), timeout=5, interval=0))
        self.assertFalse(eventually(lambda: False, timeout=0.05, interval=0.01))

    def test_any_error_counts_as_not_yet(self) -> None:
        self.assertFalse(eventually(lambda: 1 / 0, timeout=0.05, interval=0.01))


def _raise(exc: Exception) -> Callable[[], bool]:
    def predicate() -> bool:
        raise exc

    return predicate
