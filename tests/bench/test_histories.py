"""The interleaved timing both history legs use (``bench/histories.py``)."""

from contextlib import contextmanager
from unittest import mock

from django.test import SimpleTestCase

from bench import histories


class InterleavedMediansTests(SimpleTestCase):
    def setUp(self) -> None:
        self.calls: list[tuple[str, str]] = []  # (what, label or probe)
        self.current = ""

        def use(label: str) -> None:
            self.current = label
            self.calls.append(("use", label))

        patcher = mock.patch.object(histories, "history_use", use)
        patcher.start()
        self.addCleanup(patcher.stop)

    def probe(self, name: str):
        return lambda: self.calls.append((name, self.current))

    def test_warm_up_then_one_untimed_and_one_timed_call_per_round_histories_alternating(self) -> None:
        probes = {"a": self.probe("a"), "b": self.probe("b")}

        medians = histories.interleaved_medians({"small": 1, "large": 2}, probes, 2, warmup=3)

        uses = [label for what, label in self.calls if what == "use"]
        self.assertEqual(uses, ["small", "large", "large", "small", "small", "large"])
        calls_of_a = [label for what, label in self.calls if what == "a"]
        # Round 0: 3 warm-up calls on each history; rounds 1 and 2: an untimed and a timed call.
        self.assertEqual(
            calls_of_a,
            ["small"] * 3 + ["large"] * 3 + ["large"] * 2 + ["small"] * 2 + ["small"] * 2 + ["large"] * 2,
        )
        self.assertEqual(set(medians), {"small", "large"})
        self.assertEqual(set(medians["small"]), {"a", "b"})

    def test_median_of_the_timed_calls_in_ms(self) -> None:
        # perf_counter pairs around the timed calls of round 1 and round 2: 2 ms then 4 ms, so a median of 3.
        ticks = iter([0.0, 0.002, 1.0, 1.004])
        with mock.patch.object(histories.time, "perf_counter", lambda: next(ticks)):
            medians = histories.interleaved_medians({"only": 1}, {"p": self.probe("p")}, 2, warmup=1)

        self.assertEqual(medians, {"only": {"p": 3.0}})

    def test_on_switch_and_around_see_each_history_and_probe(self) -> None:
        switched: list[str] = []
        entered: list[str] = []

        @contextmanager
        def around(name: str):
            entered.append(name)
            yield

        histories.interleaved_medians(
            {"x": 1, "y": 2}, {"p": self.probe("p")}, 1, warmup=1, on_switch=switched.append, around=around
        )

        self.assertEqual(switched, ["x", "y", "y", "x"])
        self.assertEqual(entered, ["p"] * 4)
