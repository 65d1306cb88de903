"""The chaos soak: its schedule replays, its HTTP client and load plan behave, and a short seeded run passes.

The checker's own tests are in ``tests/chaos/test_checker.py``. ``ChaosSoakTests`` (tags
``chaos``, ``integration``) runs ``python -m chaos.run`` with a fixed seed and a few thousand
deductions in a subprocess, as CI's short tier; its seed's schedule includes both silent
partitions (worker and broker, worker and database).
"""

import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from django.conf import settings
from django.test import SimpleTestCase, tag

from chaos.load import HttpClient, Item, Target, _request, load_plan, producer_jobs
from chaos.schedule import CLUSTER_FAULT_KINDS, FAULT_KINDS, PARTITION_KINDS, TIERS, schedule_make
from harness.broker_admin import BrokerAdminError, broker_admin
from project.environment import database_drop, database_url

REPO = Path(settings.BASE_DIR)


class ChaosScheduleTests(SimpleTestCase):
    def test_a_seed_replays_the_same_schedule(self) -> None:
        first = schedule_make(seed=123, duration_s=600, cadence=TIERS["ci"])
        again = schedule_make(seed=123, duration_s=600, cadence=TIERS["ci"])
        other = schedule_make(seed=124, duration_s=600, cadence=TIERS["ci"])
        self.assertEqual([fault.as_json() for fault in first], [fault.as_json() for fault in again])
        self.assertNotEqual([fault.as_json() for fault in first], [fault.as_json() for fault in other])

    def test_the_schedule_follows_the_cadence_and_covers_every_kind(self) -> None:
        for tier, kinds in (("ci", FAULT_KINDS), ("full", CLUSTER_FAULT_KINDS)):
            cadence = TIERS[tier]
            faults = schedule_make(seed=7, duration_s=2000, cadence=cadence, kinds=kinds)
            with self.subTest(tier=tier):
                self.assertEqual({fault.kind for fault in faults}, set(kinds))
                self.assertEqual(faults[0].at_s, cadence.healthy_s)
                for before, after in itertools.pairwise(faults):
                    low, high = (
                        (cadence.partition_min_s, cadence.partition_max_s)
                        if before.kind in PARTITION_KINDS
                        else (cadence.fault_min_s, cadence.fault_max_s)
                    )
                    self.assertTrue(low <= before.duration_s <= high, before)
                    self.assertAlmostEqual(
                        after.at_s - before.at_s, before.duration_s + cadence.healthy_s, delta=0.11
                    )

    def test_partitions_outlast_the_deadlines_the_run_sets(self) -> None:
        from chaos.harness import PROCESS_ENV

        heartbeat = float(PROCESS_ENV["RELIABILITY_BROKER_HEARTBEAT_S"])
        longest = max(
            3 * heartbeat,  # the broker drops a silent connection after two to three heartbeats
            float(PROCESS_ENV["RELIABILITY_RELAY_CLAIM_S"]),
            float(PROCESS_ENV["DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_S"]),
            float(PROCESS_ENV["DATABASE_TCP_USER_TIMEOUT_MS"]) / 1000,
        )
        for tier, cadence in TIERS.items():
            with self.subTest(tier=tier):
                self.assertGreater(cadence.partition_min_s, longest)

    def test_the_ci_tier_seed_partitions_a_worker_from_the_broker_and_the_database(self) -> None:
        from chaos.run import parse_args, planned

        args = parse_args(
            ["--deductions", str(ChaosSoakTests.DEDUCTIONS), "--seed", str(ChaosSoakTests.SEED)]
        )
        *_, faults = planned(args)
        self.assertEqual(
            {fault.kind for fault in faults}, set(FAULT_KINDS), "every kind of fault, once at least"
        )
        broker = [fault for fault in faults if fault.kind == "partition_broker"]
        self.assertTrue(
            broker and broker[0].params["relay_lead"], "the relay's leader is cut off from the broker"
        )
        self.assertIn("partition_database", {fault.kind for fault in faults})

    def test_on_a_database_cluster_the_primary_is_killed_and_the_proxies_front_every_node(self) -> None:
        from chaos.run import parse_args, planned
        from harness.proxies import database_hosts, url_via

        args = parse_args(["--deductions", "10000", "--seed", "7", "--pg-cluster"])
        *_, faults = planned(args)
        self.assertIn("db_primary_kill", {fault.kind for fault in faults})
        url = "postgresql://app@10.0.0.1:5441,10.0.0.2:5442/beans?target_session_attrs=read-write"
        self.assertEqual(database_hosts(url), [("10.0.0.1", 5441), ("10.0.0.2", 5442)])
        self.assertEqual(
            url_via(url, 7001, 7002),
            "postgresql://app@127.0.0.1:7001,127.0.0.1:7002/beans?target_session_attrs=read-write",
        )


class LoopbackServer:
    """A server on 127.0.0.1 that reads each HTTP request and then ``answer``s, closes or says nothing."""

    ANSWER = b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.requests = 0
        self.stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.stopped.set()
        self.listener.close()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.listener.accept()
                self.connections += 1
                threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            data = b""
            while not self.stopped.is_set():
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, _, data = data.partition(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                while len(data) < length:
                    data += conn.recv(65536)
                data = data[length:]
                self.requests += 1
                if self.behaviour == "close":
                    return
                if self.behaviour == "silent":
                    self.stopped.wait(30)
                    return
                conn.sendall(self.ANSWER)


class ChaosHttpClientTests(SimpleTestCase):
    """``--http``: what a producer records when the web tier answers, times out, breaks or is not there."""

    def post(self, port: int, max_attempts: int = 1) -> tuple[str, int, str]:
        client = HttpClient(Target(api_key="bk_test", url=f"http://127.0.0.1:{port}", timeout_s=0.5))
        try:
            return _request(client, [Item(0, "k0", 1, 5, max_attempts)], time.time() + 30)
        finally:
            client.close()

    def serve(self, behaviour: str) -> LoopbackServer:
        server = LoopbackServer(behaviour)
        self.addCleanup(server.close)
        return server

    def test_answers_are_ok_over_one_keep_alive_connection(self) -> None:
        server = self.serve("answer")
        client = HttpClient(Target(api_key="bk_test", url=f"http://127.0.0.1:{server.port}", timeout_s=2))
        self.addCleanup(client.close)
        for n in range(3):
            self.assertEqual(
                _request(client, [Item(n, f"k{n}", 1, 5, 1)], time.time() + 30), ("ok", 1, "201")
            )
        self.assertEqual((server.connections, server.requests), (1, 3))

    def test_a_timeout_is_indeterminate(self) -> None:
        outcome, attempts, answers = self.post(self.serve("silent").port)
        self.assertEqual((outcome, attempts, answers), ("indeterminate", 1, "exception:TimeoutError"))

    def test_a_connection_broken_after_the_request_is_indeterminate(self) -> None:
        outcome, _, answers = self.post(self.serve("close").port)
        self.assertEqual(outcome, "indeterminate")
        self.assertTrue(answers.startswith("exception:"), answers)

    def test_a_connection_never_opened_is_unavailable_and_retried(self) -> None:
        with socket.create_server(("127.0.0.1", 0)) as probe:
            port = probe.getsockname()[1]  # closed again: nothing listens there
        outcome, attempts, answers = self.post(port, max_attempts=2)
        self.assertEqual((outcome, attempts), ("unavailable", 2))
        self.assertEqual(answers, "unreachable:ConnectionRefusedError unreachable:ConnectionRefusedError")


class ChaosLoadTests(SimpleTestCase):
    def test_batch_requests_stay_whole_within_one_producer_and_one_phase(self) -> None:
        plan = load_plan(seed=3, load=2000, probe=100, accounts=[1, 2, 3])
        self.assertEqual([item.number for item in plan.items], list(range(2100)))
        self.assertEqual(load_plan(seed=3, load=2000, probe=100, accounts=[1, 2, 3]), plan, "replayable")
        leaders = [item for item in plan.items if item.batch > 1]
        self.assertGreater(len(leaders), 20, "some requests are batches")
        for leader in leaders:
            members = plan.items[leader.number : leader.number + leader.batch]
            self.assertEqual(
                [m.key for m in members], [f"{leader.key.rsplit('/', 1)[0]}/{j}" for j in range(leader.batch)]
            )
            self.assertTrue(all(m.batch == 0 for m in members[1:]))
            self.assertEqual(len({plan.phase[m.number] for m in members}), 1, "a batch stays in its phase")
        for items in (plan.items[:2000], plan.items[2000:]):
            jobs = producer_jobs(items, producers=3, start_at=0, rate=30, deadline=1)
            self.assertEqual(
                sorted(item.number for _, share, *_ in jobs for item in share), [i.number for i in items]
            )
            for _, share, *_ in jobs:
                for position, item in enumerate(share):
                    if item.batch > 1:
                        self.assertEqual(
                            [m.number for m in share[position : position + item.batch]],
                            list(range(item.number, item.number + item.batch)),
                        )


@tag("chaos", "integration", "broker")
class ChaosSoakTests(SimpleTestCase):
    """The CI tier: a fixed seed, 10,000 deductions, real workers, real faults (about 4 minutes)."""

    DEDUCTIONS = int(os.environ.get("CHAOS_TEST_DEDUCTIONS", "10000"))  # the CI tier
    # CHAOS_TEST_HTTP=1: the producers POST to the real web tier (gunicorn) over HTTP (--http),
    # as the full tier does; by default through Django's test client, in process.
    HTTP = os.environ.get("CHAOS_TEST_HTTP", "") == "1"
    # Every kind of fault: the relay's leader cut off from the broker, then (after a relay
    # kill) from the database, the worker SIGKILLed, every poison, removals, the broker
    # stopped twice, sessions killed, duplicates, Redis flushed and restarted.
    SEED = 143

    @staticmethod
    def stop(run: "subprocess.Popen[str]") -> tuple[str, str]:
        """SIGTERM first: the run heals, stops its workers and deletes its vhost in its finally."""
        run.send_signal(signal.SIGTERM)
        try:
            return run.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            run.kill()
            return run.communicate()

    def test_a_seeded_chaos_run_keeps_every_invariant(self) -> None:
        instance = f"test{os.getpid()}"

        def vhost_delete() -> None:
            with contextlib.suppress(BrokerAdminError):  # as before: a cleanup that never fails
                broker_admin().vhost_delete(f"chaos-{instance}")

        # Whatever happens to the run, its vhost and database go (run.py deletes them itself
        # unless it was killed before its finally).
        self.addCleanup(vhost_delete)
        self.addCleanup(database_drop, database_url(f"beans_chaos_{instance}"))
        with tempfile.TemporaryDirectory(prefix="chaos-test-") as workdir:
            run = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "chaos.run",
                    "--deductions",
                    str(self.DEDUCTIONS),
                    "--seed",
                    str(self.SEED),
                    "--instance",
                    instance,
                    "--drop-database",
                    "--http" if self.HTTP else "--no-http",
                ],
                cwd=workdir,
                # The run is the package chaos.run of this checkout, which the working directory is not.
                env={
                    **os.environ,
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
                },
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                # A bound on a hung run, not a performance assertion.
                stdout, stderr = run.communicate(timeout=1200)
            except subprocess.TimeoutExpired:
                stdout, stderr = self.stop(run)
            except BaseException:  # the test run interrupted (SIGTERM, Ctrl-C): the soak stops too
                self.stop(run)
                raise
            output = stdout[-6000:] + stderr[-3000:]
            report_path = Path(workdir) / "chaos-report.json"
            self.assertTrue(report_path.exists(), output)
            report = json.loads(report_path.read_text())
        self.assertEqual(run.returncode, 0, output)
        self.assertEqual(report["seed"], self.SEED)
        self.assertEqual(set(report["invariants"]), {f"I{n}" for n in range(1, 11)})
        self.assertTrue(all(report["invariants"].values()), report["violations"])
        self.assertEqual(report["lost"], 0)
        self.assertEqual(report["duplicated_effects"], 0)
        self.assertEqual(report["attempted"], self.DEDUCTIONS)
        self.assertEqual(report["http"], self.HTTP)
        self.assertGreater(report["ok"], 0)
        self.assertTrue(report["schedule"], "faults were injected")
        # Every partition the schedule ran was held, and measured (README, "Chaos soak").
        planned = {
            fault["kind"].removeprefix("partition_")
            for fault in report["schedule"]
            if fault["kind"] in PARTITION_KINDS and fault["started_s"] is not None
        }
        sides = {record["side"] for record in report["partitions"] if record["lasted_s"]}
        self.assertEqual(sides, planned, report["partitions"])
        if self.DEDUCTIONS == 10_000:
            self.assertEqual(sides, {"broker", "database"})
        shutil.rmtree(
            REPO / ".run" / "chaos" / f"test{os.getpid()}", ignore_errors=True
        )  # logs kept on failure
