"""The chaos checker (``chaos.checker``): a clean history passes, and each broken rule is found.

``ChaosCheckerTests`` feed the checker crafted rows: a clean run passes, and a lost
trade, a double effect, a refused request that took effect, an unexplained dead letter,
a hole in a stream and an account applied out of order are each reported under their
invariant. ``InvariantTests`` give each invariant a history crafted to break it and no
other, and run its function alone on it.
"""

from dataclasses import replace
from typing import Any

from django.test import SimpleTestCase

from chaos.checker import (
    CHECKS,
    INVARIANTS,
    DeadLetterRow,
    Injected,
    LedgerRow,
    Liveness,
    LogRow,
    OutboxRow,
    Request,
    Snapshot,
    TradeRow,
    check,
    history_build,
    seq_holes_not_past_retention,
)

POISON = "99999999-0000-4000-8000-000000000001"


def clean_run() -> tuple[Snapshot, list[Request], Injected, Liveness]:
    """A small run in which every invariant holds.

    Account 1 (1,000 beans) pays trades 1 and 4; account 2 (50 beans) pays trade 2 and
    cannot pay trade 3 (rejected for funds). One request was refused, one indeterminate
    request committed (trade 4) and one did not; one poison message was dead-lettered.
    """
    requests = [
        Request("k1", 1, 100, "ok"),
        Request("k2", 2, 40, "ok"),
        Request("k3", 2, 40, "ok"),
        Request("k4", 1, 10, "indeterminate", attempts=2),
        Request("k5", 1, 10, "indeterminate", attempts=5),
        Request("k6", 999, 10, "refused"),
    ]
    trades = [
        TradeRow(1, "k1", 1, 100, "deducted", "m1"),
        TradeRow(2, "k2", 2, 40, "deducted", "m2"),
        TradeRow(3, "k3", 2, 40, "rejected", "m3"),
        TradeRow(4, "k4", 1, 10, "deducted", "m4"),
    ]
    outbox = [
        OutboxRow("m1", "beans.deduct", "deductions.1", 1, "sent", None),
        OutboxRow("m4", "beans.deduct", "deductions.1", 2, "sent", None),
        OutboxRow("m2", "beans.deduct", "deductions.2", 1, "sent", None),
        OutboxRow("m3", "beans.deduct", "deductions.2", 2, "sent", None),
        OutboxRow("o1", "trades.record_outcome", "outcomes.deductions.1", 1, "sent", "m1"),
        OutboxRow("o4", "trades.record_outcome", "outcomes.deductions.1", 2, "sent", "m4"),
        OutboxRow("o2", "trades.record_outcome", "outcomes.deductions.2", 1, "sent", "m2"),
        OutboxRow("o3", "trades.record_outcome", "outcomes.deductions.2", 2, "sent", "m3"),
    ]
    ledger = [
        LedgerRow(11, 1, 100, 900, "m1", 1),
        LedgerRow(12, 2, 40, 10, "m2", 2),
        LedgerRow(13, 1, 10, 890, "m4", 4),
    ]
    log = [
        LogRow("beans.deduct", "m1", "deductions.1", 1, "deducted", 0),
        LogRow("beans.deduct", "m4", "deductions.1", 2, "deducted", 1),
        LogRow("beans.deduct", "m2", "deductions.2", 1, "deducted", 0),
        LogRow("beans.deduct", "m3", "deductions.2", 2, "rejected", 0),
        LogRow("trades.record_outcome", "o1", "outcomes.deductions.1", 1, "deducted", 0),
        LogRow("trades.record_outcome", "o4", "outcomes.deductions.1", 2, "deducted", 0),
        LogRow("trades.record_outcome", "o2", "outcomes.deductions.2", 1, "deducted", 0),
        LogRow("trades.record_outcome", "o3", "outcomes.deductions.2", 2, "rejected", 0),
    ]
    streams: list[dict[str, Any]] = [
        {"stream": name, "produced_seq": 2, "consumed_watermark": 2, "max_seen": 2, "gaps_open": 0}
        for name in ("deductions.1", "deductions.2", "outcomes.deductions.1", "outcomes.deductions.2")
    ]
    streams.append({"stream": "chaos.poison.1", "produced_seq": None, "consumed_watermark": 1, "max_seen": 1})
    snapshot = Snapshot(
        initial_balances={1: 1000, 2: 50},
        balances={1: 890, 2: 10},
        trades=trades,
        ledger=ledger,
        outbox=outbox,
        message_log=log,
        dead_letters=[DeadLetterRow(1, "beans.deduct", "handler_failed", POISON, POISON, "AccountNotFound")],
        parked=0,
        streams=streams,
        gaps_escalated=0,
        queues={"beans": 0, "trades": 0, "housekeeping": 0, "dead-letters": 0},
    )
    liveness = Liveness(probe_ok=1, probe_settled=1, settle_s=1.0, bound_s=60, drained=True, drain_s=1.0)
    return snapshot, requests, Injected(poison={POISON: "unknown_account"}), liveness


class ChaosCheckerTests(SimpleTestCase):
    def failing(
        self, snapshot: Snapshot, requests: list[Request], injected: Injected, liveness: Liveness
    ) -> dict[str, list[str]]:
        """The invariants the checker finds violated, with their violations."""
        verdict = check(snapshot, requests, injected, liveness)
        return {name: problems for name, problems in verdict.violations.items() if problems}

    def test_a_clean_run_passes_every_invariant(self) -> None:
        verdict = check(*clean_run())
        self.assertEqual({name: p for name, p in verdict.violations.items() if p}, {})
        self.assertTrue(verdict.passed)
        counts = verdict.counts
        self.assertEqual(
            (counts["attempted"], counts["ok"], counts["failed"], counts["indeterminate"]), (6, 3, 1, 2)
        )
        self.assertEqual((counts["lost"], counts["duplicated_effects"]), (0, 0))
        self.assertEqual(counts["indeterminate_committed"], 1)
        self.assertEqual(counts["rejected_for_funds"], 1)
        self.assertEqual(counts["duplicated_deliveries"], 1)

    def test_rows_removed_by_retention_are_not_violations_and_are_counted(self) -> None:
        snapshot, requests, injected, liveness = clean_run()
        # Trade 1 is old: retention dropped its deduction and outcome messages and their inbox rows.
        gone = {"m1", "o1"}
        snapshot = replace(
            snapshot,
            trades=[trade._replace(made_at=100.0 if trade.id == 1 else 200.0) for trade in snapshot.trades],
            outbox=[row for row in snapshot.outbox if row.message_id not in gone],
            message_log=[row for row in snapshot.message_log if row.message_id not in gone],
        )
        self.assertEqual(
            sorted(self.failing(snapshot, requests, injected, liveness)),
            ["I3", "I5", "I6"],
            "without the retention cutoffs they are violations",
        )
        purged = replace(snapshot, retention_cutoffs={"outbox": 150.0, "message_log": 150.0})
        verdict = check(purged, requests, injected, liveness)
        self.assertEqual({name: p for name, p in verdict.violations.items() if p}, {})
        self.assertEqual(
            (verdict.counts["past_outbox_retention"], verdict.counts["past_message_log_retention"]), (1, 1)
        )
        # What remains is still checked: trade 1 deducted twice is a double effect, past retention or not.
        doubled = replace(
            purged, ledger=[*purged.ledger, LedgerRow(14, 1, 100, 790, "m1", 1)], balances={1: 790, 2: 10}
        )
        self.assertIn("I2", self.failing(doubled, requests, injected, liveness))

    def test_an_accepted_request_without_its_trade_is_a_lost_trade(self) -> None:
        snapshot, requests, injected, liveness = clean_run()
        requests.append(Request("k7", 1, 5, "ok"))  # the client was told ok; nothing has its key
        verdict = check(snapshot, requests, injected, liveness)
        self.assertEqual(verdict.counts["lost"], 1)
        self.assertFalse(verdict.invariants["I1"])
        self.assertIn("k7", verdict.violations["I1"][0])

    def test_a_deduction_that_never_happened_is_lost(self) -> None:
        snapshot, requests, injected, liveness = clean_run()
        # Trade 1 says deducted, but its ledger entry and inbox row are missing (the money stayed).
        snapshot = replace(
            snapshot,
            ledger=[entry for entry in snapshot.ledger if entry.message_id != "m1"],
            balances={1: 990, 2: 10},
        )
        verdict = check(snapshot, requests, injected, liveness)
        self.assertEqual(verdict.counts["lost"], 1)
        self.assertFalse(verdict.invariants["I1"])

    def test_a_message_deducted_twice_is_a_double_effect(self) -> None:
        snapshot, requests, injected, liveness = clean_run()
        snapshot = replace(
            snapshot, ledger=[*snapshot.ledger, LedgerRow(14, 1, 10, 880, "m4", 4)], balances={1: 880, 2: 10}
        )
        verdict = check(snapshot, requests, injected, liveness)
        self.assertEqual(verdict.counts["duplicated_effects"], 1)
        self.assertFalse(verdict.invariants["I2"])
        self.assertIn("m4 deducted 2 times", " ".join(verdict.violations["I2"]))

    def test_a_balance_that_does_not_match_its_ledger_breaks_i2(self) -> None:
        snapshot, requests, injected, liveness = clean_run()
        tampered = replace(snapshot, balances={1: 880, 2: 10})  # 10 beans gone without a ledger entry
        self.assertEqual(list(self.failing(tampered, requests, injected, liveness)), ["I2"])
        self.assertEqual(check(tampered, requests, injected, liveness).counts["duplicated_effects"], 0)

    def test_a_refused_request_that_took_effect_breaks_i4(self) -> None:
        snapshot, requests, injected, liveness = clean_run()
        requests = [
            replace_outcome(request, "refused") if request.key == "k4" else request for request in requests
        ]
        self.assertIn("I4", self.failing(snapshot, requests, injected, liveness))

    def test_an_effect_without_a_produced_message_is_a_phantom(self) -> None:
        snapshot, requests, injected, liveness = clean_run()
        snapshot = replace(
            snapshot,
            ledger=[*snapshot.ledger, LedgerRow(14, 1, 1, 889, POISON, None)],
            balances={1: 889, 2: 10},
        )
        self.assertIn("I3", self.failing(snapshot, requests, injected, liveness))

    def test_a_dead_letter_nobody_injected_breaks_quiescence(self) -> None:
        snapshot, requests, injected, liveness = clean_run()
        letter = DeadLetterRow(2, "beans.deduct", "delivery_limit", "m9", "m9", "kept failing")
        failing = self.failing(
            replace(snapshot, dead_letters=[*snapshot.dead_letters, letter]), requests, injected, liveness
        )
        self.assertEqual(list(failing), ["I8"])

    def test_an_expired_periodic_task_is_explained(self) -> None:
        snapshot, requests, injected, liveness = clean_run()
        letter = DeadLetterRow(
            2,
            "reliability.relay_outbox",
            "broker_other",
            "x",
            None,
            "broker dead-lettered it (expired) from queue",
        )
        snapshot = replace(
            snapshot,
            dead_letters=[*snapshot.dead_letters, letter],
            periodic_tasks={"reliability.relay_outbox"},
        )
        self.assertEqual(self.failing(snapshot, requests, injected, liveness), {})

    def test_a_poison_message_that_vanished_breaks_quiescence(self) -> None:
        snapshot, requests, injected, liveness = clean_run()
        self.assertEqual(
            list(self.failing(replace(snapshot, dead_letters=[]), requests, injected, liveness)), ["I8"]
        )
        injected.removed.add(POISON)  # unless the nemesis itself took it off the queue
        self.assertEqual(self.failing(replace(snapshot, dead_letters=[]), requests, injected, liveness), {})

    def test_a_hole_in_a_stream_breaks_i6(self) -> None:
        snapshot, requests, injected, liveness = clean_run()
        log = [row for row in snapshot.message_log if row.message_id != "o1"]
        self.assertIn("I6", self.failing(replace(snapshot, message_log=log), requests, injected, liveness))

    def test_slices_dropped_out_of_order_leave_holes_past_retention_not_violations(self) -> None:
        # Seqs 1-3 made at t=10 (their slice outlived its turn), 4-6 at t=20 (dropped), 7-8 at
        # t=40, 9 at t=60 (missing, after the cutoff: lost), 10 at t=70; the cutoff is t=30.
        made = {1: 10.0, 2: 10.0, 3: 10.0, 7: 40.0, 8: 40.0, 10: 70.0}

        def holes(**overrides: Any) -> list[int]:
            arguments: dict[str, Any] = {"k": 10, "cutoff": 30.0, "known_made_at": {}, "start_past": True}
            return seq_holes_not_past_retention(made, **{**arguments, **overrides})

        self.assertEqual(holes(), [9], "4-6 follow a row made before the cutoff; 9 follows one made after")
        self.assertEqual(holes(cutoff=None), [4, 5, 6, 9], "without retention every hole counts")
        self.assertEqual(holes(known_made_at={5: 50.0, 9: 20.0}), [5], "a known id decides, either way")
        without_start = {seq: at for seq, at in made.items() if seq > 3}
        self.assertEqual(
            seq_holes_not_past_retention(
                without_start, k=10, cutoff=30.0, known_made_at={}, start_past=False
            ),
            [1, 2, 3, 4, 5, 6, 9],
            "a stream's first seqs are missing for retention only if retention removed rows",
        )
        self.assertEqual(
            seq_holes_not_past_retention(without_start, k=10, cutoff=30.0, known_made_at={}, start_past=True),
            [9],
        )

    def test_deductions_applied_out_of_order_break_i7(self) -> None:
        snapshot, requests, injected, liveness = clean_run()
        ledger = [
            LedgerRow(11, 1, 10, 990, "m4", 4),  # seq 2 applied before seq 1
            LedgerRow(12, 2, 40, 10, "m2", 2),
            LedgerRow(13, 1, 100, 890, "m1", 1),
        ]
        self.assertIn("I7", self.failing(replace(snapshot, ledger=ledger), requests, injected, liveness))

    def test_trades_that_do_not_settle_after_the_heal_break_liveness(self) -> None:
        snapshot, requests, injected, liveness = clean_run()
        liveness = Liveness(probe_ok=10, probe_settled=7, bound_s=60, drained=True)
        self.assertEqual(list(self.failing(snapshot, requests, injected, liveness)), ["I10"])


def replace_outcome(request: Request, outcome: str) -> Request:
    return request._replace(outcome=outcome)


class InvariantTests(SimpleTestCase):
    """Each invariant, on a history crafted to break it and no other."""

    def assert_breaks_only(
        self, name: str, snapshot: Snapshot, requests: list[Request], injected: Injected, liveness: Liveness
    ) -> list[str]:
        """Assert that ``check`` fails ``name`` alone and that its function finds it; return what it found."""
        verdict = check(snapshot, requests, injected, liveness)
        self.assertEqual([n for n, held in verdict.invariants.items() if not held], [name])
        self.assertFalse(verdict.passed)
        found = CHECKS[name](history_build(snapshot, requests, injected, liveness))
        self.assertEqual(found, verdict.violations[name])
        return found

    def test_every_invariant_has_its_function_in_order(self) -> None:
        self.assertEqual(list(CHECKS), [name for name, _ in INVARIANTS])

    def test_the_clean_history_passes_each_invariant_function(self) -> None:
        history = history_build(*clean_run())
        for name, invariant in CHECKS.items():
            with self.subTest(name):
                self.assertEqual(invariant(history), [])

    def test_i1_an_accepted_request_whose_trade_is_not_what_it_asked_is_lost(self) -> None:
        snapshot, requests, injected, liveness = clean_run()
        requests[0] = requests[0]._replace(beans=99)  # the client asked 99; trade 1 deducted 100
        found = self.assert_breaks_only("I1", snapshot, requests, injected, liveness)
        self.assertEqual(found, ["request k1 asked 99 beans from 1, its trade 1 has 100 from 1"])
        self.assertEqual(check(snapshot, requests, injected, liveness).counts["lost"], 0)

    def test_i2_a_ledger_entry_whose_balance_after_its_predecessors_do_not_make(self) -> None:
        snapshot, requests, injected, liveness = clean_run()
        ledger = [entry._replace(balance_after=891) if entry.id == 13 else entry for entry in snapshot.ledger]
        found = self.assert_breaks_only("I2", replace(snapshot, ledger=ledger), requests, injected, liveness)
        self.assertEqual(
            found, ["ledger entry 13 of account 1 says balance_after 891, the entries before it make 890"]
        )

    def test_i3_a_trade_whose_key_no_client_sent_is_a_phantom(self) -> None:
        snapshot, requests, injected, liveness = clean_run()
        requests = [request for request in requests if request.key != "k4"]  # trade 4 has key k4
        found = self.assert_breaks_only("I3", snapshot, requests, injected, liveness)
        self.assertEqual(found, ["trade 4 has Idempotency-Key 'k4', which no client sent"])

    def test_i3_an_injected_message_that_was_handled_is_a_phantom(self) -> None:
        snapshot, requests, injected, liveness = clean_run()
        handled = LogRow("beans.deduct", POISON, "chaos.poison.1", 1, "rejected", 0)
        found = self.assert_breaks_only(
            "I3",
            replace(snapshot, message_log=[*snapshot.message_log, handled]),
            requests,
            injected,
            liveness,
        )
        self.assertEqual(found, [f"injected unknown_account message {POISON} was applied (rejected)"])

    def test_i4_a_refused_request_whose_trade_exists(self) -> None:
        snapshot, requests, injected, liveness = clean_run()
        requests = [replace_outcome(r, "unavailable") if r.key == "k4" else r for r in requests]
        found = self.assert_breaks_only("I4", snapshot, requests, injected, liveness)
        self.assertEqual(found, ["request k4 was unavailable, yet trade 4 exists"])

    def test_i5_an_inbox_row_that_says_deducted_without_a_ledger_entry(self) -> None:
        snapshot, requests, injected, liveness = clean_run()
        log = [
            row._replace(outcome="deducted") if row.message_id == "m3" else row
            for row in snapshot.message_log
        ]
        found = self.assert_breaks_only(
            "I5", replace(snapshot, message_log=log), requests, injected, liveness
        )
        self.assertEqual(found, ["inbox says m3 was deducted; the ledger has no entry"])

    def test_i5_orphan_outbox_messages_are_listed_in_outbox_order(self) -> None:
        snapshot, requests, injected, liveness = clean_run()
        orphans = [OutboxRow(f"x{i}", "beans.deduct", f"deductions.x{i}", 1, "sent", None) for i in range(9)]
        history = history_build(
            replace(snapshot, outbox=[*snapshot.outbox, *orphans]), requests, injected, liveness
        )
        found = CHECKS["I5"](history)
        self.assertEqual(found, [f"outbox message x{i} has no trade" for i in range(9)])

    def test_i6_a_gap_the_consumer_still_has_open(self) -> None:
        snapshot, requests, injected, liveness = clean_run()
        streams = [{**p, "gaps_open": 1} if p["stream"] == "deductions.1" else p for p in snapshot.streams]
        found = self.assert_breaks_only(
            "I6", replace(snapshot, streams=streams), requests, injected, liveness
        )
        self.assertEqual(found, ["stream deductions.1: 1 gaps still open"])

    def test_i7_deductions_applied_out_of_order(self) -> None:
        snapshot, requests, injected, liveness = clean_run()
        ledger = [
            LedgerRow(11, 1, 10, 990, "m4", 4),  # seq 2 applied before seq 1
            LedgerRow(12, 2, 40, 10, "m2", 2),
            LedgerRow(13, 1, 100, 890, "m1", 1),
        ]
        found = self.assert_breaks_only("I7", replace(snapshot, ledger=ledger), requests, injected, liveness)
        self.assertEqual(found, ["account 1: seq 1 applied after seq 2"])

    def test_i8_an_outbox_message_still_pending_after_the_drain(self) -> None:
        snapshot, requests, injected, liveness = clean_run()
        outbox = [
            row._replace(status="pending") if row.message_id == "o1" else row for row in snapshot.outbox
        ]
        found = self.assert_breaks_only("I8", replace(snapshot, outbox=outbox), requests, injected, liveness)
        self.assertEqual(found, ["1 outbox messages still pending, e.g. o1"])

    def test_i9_a_trade_rejected_although_its_account_held_enough(self) -> None:
        snapshot, requests, injected, liveness = clean_run()
        # Account 2 opened with 90: after trade 2 (40) it held 50, enough for trade 3 (40).
        ledger = [entry._replace(balance_after=50) if entry.id == 12 else entry for entry in snapshot.ledger]
        richer = replace(snapshot, initial_balances={1: 1000, 2: 90}, balances={1: 890, 2: 50}, ledger=ledger)
        found = self.assert_breaks_only("I9", richer, requests, injected, liveness)
        self.assertEqual(found, ["trade 3 rejected although account 2 held 50 >= 40 beans"])
        self.assertEqual(check(richer, requests, injected, liveness).counts["rejected_for_funds"], 0)

    def test_i10_a_pipeline_that_did_not_drain(self) -> None:
        snapshot, requests, injected, liveness = clean_run()
        found = self.assert_breaks_only("I10", snapshot, requests, injected, replace(liveness, drained=False))
        self.assertEqual(found, ["the pipeline did not drain within the bound (1.0s)"])

    def test_verify_findings_are_filed_under_the_invariants_they_name(self) -> None:
        snapshot, requests, injected, liveness = clean_run()
        findings = ["I2/I6: stream deductions.1 ahead of its ledger", "an outcome without a trade", "I99: x"]
        verdict = check(replace(snapshot, code_violations=findings), requests, injected, liveness)
        self.assertEqual(
            {name: problems for name, problems in verdict.violations.items() if problems},
            {
                "I2": ["verify: I2/I6: stream deductions.1 ahead of its ledger"],
                "I5": ["verify: an outcome without a trade"],
                "I6": ["verify: I2/I6: stream deductions.1 ahead of its ledger"],
            },
        )


class HistoryTests(SimpleTestCase):
    def test_each_account_is_replayed_in_its_stream_order_with_what_it_held(self) -> None:
        snapshot, requests, injected, liveness = clean_run()
        history = history_build(
            replace(snapshot, trades=list(reversed(snapshot.trades))), requests, injected, liveness
        )
        self.assertEqual(
            {
                account: [(step.trade.id, step.held) for step in steps or ()]
                for account, steps in history.replay.items()
            },
            {1: [(1, 1000), (4, 900)], 2: [(2, 50), (3, 10)]},
        )

    def test_rows_past_retention_are_counted_per_trade(self) -> None:
        snapshot, requests, injected, liveness = clean_run()
        old = replace(
            snapshot,
            trades=[trade._replace(made_at=100.0 if trade.id < 3 else 200.0) for trade in snapshot.trades],
            retention_cutoffs={"outbox": 150.0},
        )
        history = history_build(old, requests, injected, liveness)
        self.assertEqual((history.past_outbox, history.past_log), (2, 0))
        self.assertTrue(history.past("outbox", "m2"))
        self.assertFalse(history.past("message_log", "m2"))
        self.assertFalse(history.past("outbox", "m3"))
