"""The nemesis: each fault of the schedule, injected, held for its window, and healed.

It remembers what it broke (the broker app, Redis, a cluster node, a worker's silent
partition), so that ``heal_all`` can undo it whatever happens, and what it injected on
purpose (poison messages, duplicates, messages removed from a queue), so that the checker
can tell those from failures. Each partition is also recorded with what it cost
(``partitions``: how long it lasted, when the relay's lead moved, when the broker dropped
the cut-off worker, when it rejoined), for the report.
"""

import argparse
import hmac
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from datetime import UTC, datetime
from typing import Any

from chaos import checker
from chaos.harness import REDIS_DB, REDIS_HOST, REDIS_PORT, Names, Pipeline, WorkerProxies
from chaos.schedule import Fault
from harness.database import scalar
from harness.polling import eventually, sleep_until
from harness.processes import Child
from harness.rabbitmq import amqp_connection, queue_counts, queue_names, rabbitmqctl


def _message_ids_in(body: Any, properties: dict[str, Any]) -> tuple[list[str], str]:
    """The message ids a task message carries (a batch envelope carries many), and what it is."""
    try:
        envelope = json.loads(body)[0][0]
        kind = envelope.get("kind") or "message"
        if kind == "batch":
            return [str(item.get("message_id")) for item in envelope.get("messages", [])], "batch"
        if envelope.get("message_id"):
            return [str(envelope["message_id"])], kind
    except Exception:  # noqa: BLE001 - not a task message we can read (a poison body, say)
        kind = "unreadable"
    return [str(properties.get("correlation_id", ""))], kind


class Nemesis:
    """Runs the faults; remembers what it broke (to heal it) and what it injected (for the checker)."""

    def __init__(
        self, *, pipeline: Pipeline, names: Names, env: dict[str, str], args: argparse.Namespace
    ) -> None:
        self.pipeline, self.names, self.env, self.args = pipeline, names, env, args
        self.injected = checker.Injected()
        self.accounts: list[int] = []
        self.broker_stopped: str | None = None  # "system" or a cluster node
        self.redis_stopped = False
        self.cluster: Any = None
        self.pg_cluster: Any = None  # harness.postgres_cluster.PostgresCluster with --pg-cluster
        self.pg_killed: str | None = None  # a database node killed and not restarted yet
        self.poison_n = 0
        self.proxies: WorkerProxies | None = None  # set by the run: the proxied worker's proxies
        self.partitions: list[dict[str, Any]] = []  # one record per partition fault that ran

    # ---- the schedule

    def run(self, fault: Fault, *, until: float) -> None:
        action = getattr(self, f"fault_{fault.kind}")
        try:
            action(fault, until)
        finally:
            sleep_until(until)

    def heal_all(self) -> list[str]:
        """Undo whatever is still broken: partitions, broker app, Redis, cluster nodes. Each step bounded."""
        notes = []
        if self.proxies is not None:
            notes.extend(self.proxies.heal_all())
        if self.broker_stopped:
            notes.append(self._broker_start())
        if self.redis_stopped:
            notes.append(self._redis_start())
        if self.pg_killed:
            notes.append(self._pg_restart())
        if self.cluster is not None:
            for node in sorted(self.cluster.down_nodes):
                try:
                    self.cluster.restart(node)
                    notes.append(f"restarted cluster node {node}")
                except Exception as exc:  # noqa: BLE001 - reported; the cleanup goes on
                    notes.append(f"could not restart cluster node {node}: {exc}")
        return notes

    # ---- processes

    def fault_worker_child_kill(self, fault: Fault, until: float) -> None:
        start = time.monotonic()
        killed: set[int] = set()
        for victim, offset in zip(fault.params["victims"], fault.params["offsets"], strict=True):
            sleep_until(start + offset * fault.duration_s * 0.8)
            worker = self.pipeline.pick(victim)
            children = [pid for pid in worker.children() if pid not in killed] if worker else []
            if not worker or not children:
                fault.notes.append("no worker child to kill")
                continue
            pid = children[min(int(victim * 7 % 1 * len(children)), len(children) - 1)]
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            killed.add(pid)
            fault.notes.append(f"SIGKILL pool child {pid} of {worker.name}")

    def fault_worker_kill(self, fault: Fault, until: float) -> None:
        worker = self.pipeline.pick(fault.params["victim"])
        if worker is None:
            fault.notes.append("no live worker")
            return
        worker.signal(signal.SIGKILL)  # the main process only: its pool children are orphaned mid-task
        self.pipeline.retire(worker)
        fault.notes.append(f"SIGKILL main process {worker.pid} of {worker.name}")
        sleep_until(until)
        worker.signal_group(signal.SIGKILL)  # whatever the orphans still do
        worker.wait(10)
        fault.notes.extend(self.pipeline.replenish())

    def fault_worker_term(self, fault: Fault, until: float) -> None:
        worker = self.pipeline.pick(fault.params["victim"])
        if worker is None:
            fault.notes.append("no live worker")
            return
        worker.signal(signal.SIGTERM)
        self.pipeline.retire(worker)
        began = time.monotonic()
        if worker.wait(until - began):
            fault.notes.append(f"SIGTERM {worker.name}: warm shutdown took {time.monotonic() - began:.1f}s")
        else:
            fault.notes.append(f"SIGTERM {worker.name}: still shutting down at heal; SIGKILL")
        worker.signal_group(signal.SIGKILL)
        worker.wait(10)
        fault.notes.extend(self.pipeline.replenish())

    def fault_relay_kill(self, fault: Fault, until: float) -> None:
        """A worker whose relay loop dies at a fault point: it must first become the active loop.

        One relay loop per database is active (it holds an advisory lock); the others stand
        by. The holder's session is terminated (a fault of its own) until this worker's loop
        takes the lock, then its first relay pass reaches the fault point.
        """
        point = fault.params["point"]
        fault_dir = self.names.run_dir / f"faults-{fault.index}"
        shutil.rmtree(fault_dir, ignore_errors=True)
        extra = {
            "RELIABILITY_FAULT_INJECTION": "1",
            "RELIABILITY_FAULTS": f"{point}=kill:1",
            "RELIABILITY_FAULT_DIR": str(fault_dir),
        }
        from reliability.conf import settings

        # Not the housekeeping queue: the beat relay sweep would pass the fault point in a pool child.
        queues = [*settings.BEANS_QUEUES, "trades"]
        worker = self.pipeline.start_worker(tag="relayfault", extra_env=extra, base=False, queues=queues)
        # A worker takes a few seconds to start on a loaded machine: the window lasts until the
        # fault fired, and at least 20 s. Its pool children are paused with the other workers
        # at each handover: their after-commit fast path would publish (and pass the fault
        # point) while no loop holds the lock.
        handovers = self._relay_lead_to(
            worker,
            deadline=max(until, time.monotonic() + 20.0),
            done=lambda: (fault_dir / f"{point}.0").exists(),
            pause_children=True,
        )
        fired = (fault_dir / f"{point}.0").exists()
        if not worker.alive():
            fault.notes.append(
                f"{worker.name}'s relay loop reached {point} and was SIGKILLed "
                f"({handovers} relay-lock session(s) terminated, the other workers paused, to hand the lock over)"
            )
        elif fired:
            fault.notes.append(f"{point} fired in a pool child of {worker.name} (an after-commit publish)")
        else:
            fault.notes.append(f"{point} was not reached within the window ({handovers} handovers)")
        worker.stop(timeout=10)

    def _relay_lead_to(
        self,
        worker: Child,
        *,
        deadline: float,
        done: Callable[[], bool] | None = None,
        pause_children: bool = False,
    ) -> int:
        """Make ``worker``'s relay loop the active one (or stop at ``deadline``, or once ``done()``).

        The holder's session is terminated while the other workers' main processes (their
        relay loops) are paused a moment, so that this worker's standing-by loop is the one
        that takes the lock. Returns how many holders' sessions were terminated.
        """
        handovers = 0

        def finished() -> bool:
            if done is not None:
                return done()
            return (self._relay_lock_holder() or (0, ""))[1] == worker.appname

        while time.monotonic() < deadline and worker.alive() and not finished():
            holder = self._relay_lock_holder()
            if holder is None or holder[1] == worker.appname or not self._relay_standing_by(worker.appname):
                time.sleep(0.3)
                continue
            paused = [w.pid for w in self.pipeline.workers if w.alive() and w is not worker]
            paused += worker.children() if pause_children else []
            for pid in paused:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
            try:
                with suppress(Exception):
                    scalar("SELECT pg_terminate_backend(%s)", [holder[0]])
                handovers += 1
                eventually(
                    lambda: (self._relay_lock_holder() or (0, ""))[1] == worker.appname,
                    timeout=3.0,
                    interval=0.1,
                )
            finally:
                for pid in paused:
                    with suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGCONT)
            time.sleep(0.5)
        return handovers

    @staticmethod
    def _relay_lock_holder() -> tuple[int, str] | None:
        """The PostgreSQL session holding the relay loop's advisory lock, and its process's name."""
        from django.db import connection

        from reliability.produce.relay import RELAY_LOCK

        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT l.pid, a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s AND l.objid = %s "
                "AND l.objsubid = 2 AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                list(RELAY_LOCK),
            )
            row = cursor.fetchone()
        return (int(row[0]), str(row[1])) if row else None

    @staticmethod
    def _relay_standing_by(appname: str) -> bool:
        """Whether a relay loop of that process is up, asking for the lock."""
        return bool(
            scalar(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name = %s "
                "AND query LIKE '%%pg_try_advisory_lock%%')",
                [appname],
            )
        )

    # ---- broker

    def _cluster_node(self, fraction: float) -> str:
        nodes = [node for node in self.cluster.nodes if node not in self.cluster.down_nodes]
        return str(nodes[min(int(fraction * len(nodes)), len(nodes) - 1)])

    def fault_broker_restart(self, fault: Fault, until: float) -> None:
        began = time.monotonic()
        if self.cluster is not None:
            node = self._cluster_node(fault.params["node"])
            self.cluster._run("ctl", node, "stop_app")
            self.broker_stopped = node
            fault.notes.append(
                f"rabbitmqctl stop_app on cluster node {node} ({time.monotonic() - began:.1f}s)"
            )
        else:
            rabbitmqctl("stop_app", env=self.env)
            self.broker_stopped = "system"
            fault.notes.append(f"rabbitmqctl stop_app ({time.monotonic() - began:.1f}s)")
        sleep_until(until)
        fault.notes.append(self._broker_start())

    def _broker_start(self) -> str:
        began = time.monotonic()
        try:
            if self.broker_stopped == "system":
                rabbitmqctl("start_app", env=self.env, timeout=300)
            elif self.broker_stopped:
                self.cluster._run("ctl", self.broker_stopped, "start_app")
        except Exception as exc:  # noqa: BLE001 - reported; heal_all tries again
            return f"start_app failed: {exc}"
        self.broker_stopped = None
        return f"rabbitmqctl start_app ({time.monotonic() - began:.1f}s)"

    def fault_leader_kill(self, fault: Fault, until: float) -> None:
        if self.cluster is None:
            fault.notes.append("skipped: the 3-node cluster could not start")
            return
        leader = self.cluster.leader_of(fault.params["queue"])
        self.cluster.kill(leader)
        fault.notes.append(f"kill -9 {leader}, leader of the {fault.params['queue']} queue")
        sleep_until(until)
        began = time.monotonic()
        self.cluster.restart(leader)
        fault.notes.append(f"restarted {leader} ({time.monotonic() - began:.1f}s)")

    # ---- database

    def fault_db_primary_kill(self, fault: Fault, until: float) -> None:
        """SIGKILL the database primary's postmaster; Patroni promotes the synchronous standby.

        Every process must find the new primary through the multi-host URL; the killed node
        rejoins as a replica at heal.
        """
        from django.db import connections

        if self.pg_cluster is None:
            fault.notes.append("skipped: no database cluster (--pg-cluster)")
            return
        began = time.monotonic()
        leader = self.pg_cluster.kill("leader")
        self.pg_killed = leader
        new_leader = self.pg_cluster.wait_for_new_leader(leader)
        # The controller's own session died with the primary; its next query opens one on the new.
        connections.close_all()
        fault.notes.append(
            f"kill -9 the postmaster of {leader}, the database primary; {new_leader} promoted "
            f"{time.monotonic() - began:.1f}s later"
        )
        sleep_until(until)
        fault.notes.append(self._pg_restart())

    def _pg_restart(self) -> str:
        began = time.monotonic()
        try:
            self.pg_cluster.restart(self.pg_killed)
        except Exception as exc:  # noqa: BLE001 - reported; heal_all tries again
            return f"could not restart database node {self.pg_killed}: {exc}"
        node, self.pg_killed = self.pg_killed, None
        return f"database node {node} back as a replica ({time.monotonic() - began:.1f}s)"

    def fault_duplicate_publish(self, fault: Fault, until: float) -> None:
        """Sent messages, signed as the relay signed them, published again straight to their queue."""
        from celery import current_app

        from reliability.envelope import outbox_envelope
        from reliability.models import OutboxMessage

        picks = fault.params["picks"]
        outcomes = round(len(picks) * fault.params["outcomes_share"])
        chosen: list[OutboxMessage] = []
        for task, fractions in (
            ("trades.record_outcome", picks[:outcomes]),
            ("beans.deduct", picks[outcomes:]),
        ):
            ids = list(
                OutboxMessage.objects.filter(task_name=task, status=OutboxMessage.Status.SENT)
                .order_by("id")
                .values_list("id", flat=True)
            )
            if ids:
                wanted = [ids[min(int(f * len(ids)), len(ids) - 1)] for f in fractions]
                rows = OutboxMessage.objects.in_bulk(wanted)
                chosen.extend(rows[pk] for pk in wanted)
        with amqp_connection() as conn:
            producer = conn.Producer()
            for row in chosen:
                current_app.send_task(
                    row.task_name,
                    args=[outbox_envelope(row)],
                    task_id=str(row.message_id),
                    queue=row.queue,
                    producer=producer,
                    retry=False,
                )
        self.injected.duplicates_published += len(chosen)
        kinds = sum(1 for row in chosen if row.task_name == "beans.deduct")
        fault.notes.append(
            f"published {len(chosen)} sent messages again ({kinds} deductions, {len(chosen) - kinds} outcomes)"
        )

    def fault_queue_remove(self, fault: Fault, until: float) -> None:
        """Take messages off the head of a queue (basic.get + ack): lost, as far as the broker knows.

        The workers prefetch whatever is published, so the queues hardly ever hold a ready
        message: the pool children are paused (SIGSTOP) until the prefetch windows fill and
        messages are left ready (at most a few seconds), then resumed.
        """
        names = set(queue_names())
        removed: list[str] = []
        heartbeats = 0
        paused = [pid for worker in self.pipeline.workers for pid in worker.children()]
        for pid in paused:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        try:
            resume_at = min(until - 0.5, time.monotonic() + 4.0)
            wanted = [queue for queue in fault.params["queues"] if queue in names]
            with amqp_connection() as conn:
                channel = conn.channel()
                while wanted and time.monotonic() < resume_at:
                    for queue in list(wanted):  # round robin: an empty queue must not starve the others
                        message = channel.basic_get(queue, no_ack=False)
                        if message is None:
                            continue
                        ids, kind = _message_ids_in(message.body, dict(message.properties))
                        channel.basic_ack(message.delivery_tag)
                        self.injected.removed.update(ids)
                        if kind == "heartbeat":  # harmless to lose (the next one repeats it): take another
                            heartbeats += 1
                            continue
                        removed.append(f"{queue}: {kind}" + (f" of {len(ids)}" if kind == "batch" else ""))
                        wanted.remove(queue)
                    time.sleep(0.05)
        finally:
            for pid in paused:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
        fault.notes.append(
            f"paused {len(paused)} pool children; removed {', '.join(removed) or 'nothing (no message was left ready)'}"
            + (f" (and {heartbeats} heartbeats)" if heartbeats else "")
        )

    def fault_poison(self, fault: Fault, until: float) -> None:
        from celery import current_app

        from reliability.conf import settings
        from reliability.envelope import KEY_ID, SIGNATURE, envelope_sign

        sleep_until(time.monotonic() + fault.params["offset"] * fault.duration_s * 0.5)
        queue = settings.BEANS_QUEUES[0]
        sent = []
        with amqp_connection() as conn:
            producer = conn.Producer()
            for kind in fault.params["kinds"]:
                self.poison_n += 1
                n = self.poison_n
                message_id = str(uuid.uuid4())
                if kind == "not_json":
                    producer.publish(
                        b"{chaos: this is not json",
                        exchange=queue,
                        routing_key=queue,
                        content_type="application/json",
                        content_encoding="utf-8",
                        headers={"task": "beans.deduct", "id": message_id, "lang": "py"},
                        correlation_id=message_id,
                        delivery_mode=2,
                    )
                else:
                    unknown = kind == "unknown_account"
                    envelope: dict[str, Any] = {
                        "v": 1,
                        "message_id": message_id,
                        # A forged seq far past the real stream: recording it would show as a gap (I6).
                        "stream": f"chaos.poison.{n}" if unknown else "deductions.0",
                        "seq": 1 if unknown else 10**9 + n,
                        "high": 1 if unknown else 10**9 + n,
                        "produced_at": datetime.now(UTC).isoformat(),
                        "payload": {
                            "trade_id": 10**12 + n,
                            "account_id": 10**9 + n if unknown else self.accounts[0],
                            "beans": 1,
                        },
                    }
                    if unknown:
                        envelope = envelope_sign(
                            envelope
                        )  # authentic, but for an account that does not exist
                    elif kind == "forged":
                        envelope[KEY_ID] = settings.RELIABILITY_SIGNING_KEY_ID
                        envelope[SIGNATURE] = hmac.new(
                            secrets.token_bytes(32), json.dumps(envelope, sort_keys=True).encode(), "sha256"
                        ).hexdigest()
                    current_app.send_task(
                        "beans.deduct",
                        args=[envelope],
                        task_id=message_id,
                        queue=queue,
                        producer=producer,
                        retry=False,
                    )
                self.injected.poison[message_id] = kind
                sent.append(kind)
        fault.notes.append(f"published poison: {', '.join(sent)}")

    # ---- silent partitions

    def fault_partition_broker(self, fault: Fault, until: float) -> None:
        self._partition("broker", fault, until)

    def fault_partition_database(self, fault: Fault, until: float) -> None:
        self._partition("database", fault, until)

    def _partition(self, side: str, fault: Fault, until: float) -> None:
        """Cut the proxied worker off from the broker or the database, silently, for the fault's duration.

        With ``relay_lead`` the worker is first made the relay's leader (at most 10 s), so
        that the lead has to move. The partition itself then lasts the whole drawn
        duration. Meanwhile the controller (which is not proxied) watches the relay lock,
        the consumers the broker counts and the worker's database sessions; after the heal
        it waits (at most 60 s) for the worker to be back: consuming again (broker), its
        sessions running queries again (database).
        """
        worker = self.pipeline.proxied() if self.proxies is not None else None
        if self.proxies is None or worker is None:
            fault.notes.append("skipped: no live worker runs through the proxies")
            return
        handovers = 0
        if fault.params.get("relay_lead"):
            handovers = self._relay_lead_to(worker, deadline=time.monotonic() + 10.0)
        holder = self._relay_lock_holder()
        leader = holder is not None and holder[1] == worker.appname
        consumers = self._consumers() if side == "broker" else None
        sessions, _ = self._sessions(worker.appname)
        record: dict[str, Any] = {
            "fault": fault.index,
            "side": side,
            "worker": worker.name,
            "drop_packets": side == "database" and self.proxies.drop_database_packets,
            "relay_leader": leader,
            "relay_lead_handovers": handovers,
            "planned_s": fault.duration_s,
            "lasted_s": None,
            "lead_moved_after_s": None,
            "lead_moved_to": None,
            "consumers_at_start": consumers,
            "broker_dropped_consumers_after_s": None,
            "sessions_at_start": sessions,
            "sessions_ended_by_server": 0,
            "in_transaction_seen": 0,
            "in_transaction_ended_after_s": None,
            "rejoined_after_heal_s": None,
        }
        self.partitions.append(record)
        began = time.monotonic()
        self.proxies.partition(side)
        try:
            self._partition_watch(record, worker, leader=leader, consumers=consumers, began=began)
        finally:
            self.proxies.heal(side)
            record["lasted_s"] = round(time.monotonic() - began, 1)
        healed = time.monotonic()
        healed_at = scalar("SELECT now()")

        def back() -> bool:
            if side == "broker":
                return (self._consumers() or 0) >= (consumers or 0)
            return bool(
                scalar(
                    "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name = %s "
                    "AND state_change > %s)",
                    [worker.appname, healed_at],
                )
            )

        if eventually(back, timeout=60.0, interval=0.5) and worker.alive():
            record["rejoined_after_heal_s"] = round(time.monotonic() - healed, 1)
        fault.notes.append(self._partition_note(record, worker))

    def _partition_watch(
        self, record: dict[str, Any], worker: Child, *, leader: bool, consumers: int | None, began: float
    ) -> None:
        """Poll what the partition does, until its planned duration is over."""
        end = began + record["planned_s"]
        next_count = began
        fewest_sessions = record["sessions_at_start"]
        while time.monotonic() < end:
            now = time.monotonic()
            if leader and record["lead_moved_after_s"] is None:
                holder = self._relay_lock_holder()
                if holder is not None and holder[1] != worker.appname:
                    record["lead_moved_after_s"] = round(now - began, 1)
                    record["lead_moved_to"] = holder[1].removeprefix("chaos-worker-")
            if record["side"] == "database":
                total, in_transaction = self._sessions(worker.appname)
                fewest_sessions = min(fewest_sessions, total)
                record["sessions_ended_by_server"] = record["sessions_at_start"] - fewest_sessions
                record["in_transaction_seen"] = max(record["in_transaction_seen"], in_transaction)
                if record["in_transaction_seen"] and not in_transaction:
                    if record["in_transaction_ended_after_s"] is None:
                        record["in_transaction_ended_after_s"] = round(now - began, 1)
            elif consumers and record["broker_dropped_consumers_after_s"] is None and now >= next_count:
                next_count = now + 1.0
                if (self._consumers() or consumers) < consumers:
                    record["broker_dropped_consumers_after_s"] = round(time.monotonic() - began, 1)
            time.sleep(0.5)

    @staticmethod
    def _partition_note(record: dict[str, Any], worker: Child) -> str:
        how = "silent drop" + (", packets dropped too" if record["drop_packets"] else "")
        parts = [f"{record['worker']} cut off from the {record['side']} ({how}) for {record['lasted_s']}s"]
        if record["relay_leader"]:
            moved = record["lead_moved_after_s"]
            handovers = record["relay_lead_handovers"]
            parts.append(
                "it led the relay"
                + (f" ({handovers} holder session(s) terminated to make it lead)" if handovers else "")
                + (
                    f"; lead moved to {record['lead_moved_to']} after {moved}s"
                    if moved is not None
                    else "; lead did not move"
                )
            )
        else:
            parts.append("not the relay's leader")
        if record["side"] == "broker":
            dropped = record["broker_dropped_consumers_after_s"]
            parts.append(
                f"broker dropped its consumers after {dropped}s"
                if dropped is not None
                else "consumers not seen dropped"
            )
        else:
            ended = record["in_transaction_ended_after_s"]
            parts.append(
                f"the server ended {record['sessions_ended_by_server']} of its {record['sessions_at_start']} sessions"
                + (
                    f" ({record['in_transaction_seen']} left idle in a transaction, gone after {ended}s)"
                    if record["in_transaction_seen"]
                    else ""
                )
            )
        rejoined = record["rejoined_after_heal_s"]
        parts.append(
            f"rejoined {rejoined}s after the heal"
            if rejoined is not None
            else ("not back within 60s of the heal" if worker.alive() else "the worker exited")
        )
        return "; ".join(parts)

    @staticmethod
    def _consumers() -> int | None:
        """Consumers the broker counts on the beans queue (every base worker consumes it)."""
        from reliability.conf import settings

        return queue_counts(consumers=True).get(settings.BEANS_QUEUES[0])

    def _sessions(self, appname: str) -> tuple[int, int]:
        """The process's database sessions as the server sees them: (all, idle in transaction)."""
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*), count(*) FILTER (WHERE state LIKE 'idle in transaction%%') "
                "FROM pg_stat_activity WHERE datname = %s AND application_name = %s",
                [self.names.db, appname],
            )
            total, in_transaction = cursor.fetchone()
        return int(total), int(in_transaction)

    # ---- database and Redis

    def fault_pg_terminate(self, fault: Fault, until: float) -> None:
        start = time.monotonic()
        patterns = ["chaos-worker-%", "chaos-beat"] + (
            ["chaos-producer-%"] if fault.params["producers_too"] else []
        )
        for offset in fault.params["offsets"]:
            sleep_until(start + offset * fault.duration_s * 0.8)
            killed = scalar(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s "
                "AND pid <> pg_backend_pid() AND application_name LIKE ANY(%s)",
                [self.names.db, patterns],
            )
            fault.notes.append(f"pg_terminate_backend on {killed} sessions ({', '.join(patterns)})")

    def _redis(self) -> Any:
        import redis

        return redis.Redis(
            host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB, socket_timeout=5, socket_connect_timeout=5
        )

    def fault_redis(self, fault: Fault, until: float) -> None:
        client = self._redis()
        keys = client.dbsize()
        client.flushdb()
        fault.notes.append(
            f"FLUSHDB of Redis database {REDIS_DB} ({keys} keys: the snowflake worker-id leases)"
        )
        if not fault.params["restart"]:
            return
        if self.args.redis_restart == "never":
            fault.notes.append("redis-server restart skipped (--redis-restart never)")
            return
        others = [c for c in client.client_list() if int(c.get("db", REDIS_DB)) != REDIS_DB]
        client.close()
        if others and self.args.redis_restart == "auto":
            fault.notes.append(
                f"redis-server restart skipped: {len(others)} connection(s) to other Redis databases "
                "(someone else is using this Redis); flushed our database only"
            )
            return
        subprocess.run(
            ["redis-cli", "-h", REDIS_HOST, "-p", str(REDIS_PORT), "shutdown", "nosave"],
            capture_output=True,
            timeout=15,
            check=False,
        )
        self.redis_stopped = True
        fault.notes.append(f"redis-server shut down (nosave) for {fault.params['down_s']}s")
        time.sleep(fault.params["down_s"])
        fault.notes.append(self._redis_start())

    def _redis_start(self) -> str:
        if eventually(lambda: bool(self._redis().ping()), timeout=0.5):
            self.redis_stopped = False
            return "redis-server was already back"
        subprocess.run(
            ["redis-server", "--daemonize", "yes", "--bind", REDIS_HOST, "--port", str(REDIS_PORT),
             "--save", "", "--appendonly", "no"],
            capture_output=True,
            timeout=30,
            check=False,
        )  # fmt: skip
        if eventually(lambda: bool(self._redis().ping()), timeout=30):
            self.redis_stopped = False
            return "redis-server restarted"
        return "redis-server did not come back within 30s"
