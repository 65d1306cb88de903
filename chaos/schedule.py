"""The fault schedule: drawn entirely from the seed before anything runs, so a seed replays exactly.

A schedule alternates a healthy period and a fault window: ``healthy_s`` of normal
operation, then one fault active for a duration drawn from ``[fault_min_s,
fault_max_s]`` (a partition from ``[partition_min_s, partition_max_s]``: it must outlast
every deadline it is meant to trip), and so on until the load's planned duration is covered. The kinds
are drawn from a seeded shuffle of every kind, reshuffled once each has been used,
so a schedule long enough covers every kind. Whatever a fault will need at run time
(which worker, which child, how many messages, which fault point) is drawn here
too, as numbers; the runner maps them onto the processes and rows it finds then.
"""

import random
from dataclasses import asdict, dataclass, field
from typing import Any

# Faults on a single node (the pipeline runs against the system RabbitMQ node).
FAULT_KINDS = (
    "worker_child_kill",  # SIGKILL pool children mid-task (the pool replaces them)
    "worker_kill",  # SIGKILL a worker's main process; a replacement starts at heal
    "worker_term",  # SIGTERM a worker (warm shutdown mid-batch); a replacement starts at heal
    "relay_kill",  # a worker whose relay loop SIGKILLs itself at a relay fault point
    "broker_restart",  # rabbitmqctl stop_app, start_app at heal
    "pg_terminate",  # pg_terminate_backend on the workers' and relay's sessions (and producers')
    "redis",  # FLUSHDB of the run's Redis database; restart of redis-server when safe
    "duplicate_publish",  # sent outbox messages published again straight to their queue
    "queue_remove",  # messages taken off a queue (basic.get + ack): their seqs go missing
    "poison",  # undecodable, forged, unsigned, and unknown-account messages
    "partition_broker",  # one worker's traffic to RabbitMQ silently dropped (no RST, no FIN), then healed
    "partition_database",  # the same worker's traffic to PostgreSQL silently dropped, then healed
)
# Held longer than the other faults: past the heartbeats, claims and session timeouts (run.py).
PARTITION_KINDS = ("partition_broker", "partition_database")
# On the private 3-node cluster, also:
CLUSTER_FAULT_KINDS = (*FAULT_KINDS, "leader_kill")  # kill -9 the beans queue's leader node
# On a private Patroni cluster for the database (--pg-cluster), also:
DB_CLUSTER_FAULT_KINDS = ("db_primary_kill",)  # kill -9 the primary's postmaster: a failover

RELAY_FAULT_POINTS = ("relay.before_publish", "relay.after_publish", "relay.before_mark_sent")
POISON_KINDS = ("not_json", "forged", "unsigned", "unknown_account")
MAX_FAULTS = 10_000  # a bound, whatever the duration


@dataclass(frozen=True)
class Cadence:
    healthy_s: float
    fault_min_s: float
    fault_max_s: float
    partition_min_s: float
    partition_max_s: float

    def describe(self) -> str:
        return (
            f"healthy {self.healthy_s:g} s / fault {self.fault_min_s:g}-{self.fault_max_s:g} s, "
            f"partitions {self.partition_min_s:g}-{self.partition_max_s:g} s"
        )

    def duration_range(self, kind: str) -> tuple[float, float]:
        if kind in PARTITION_KINDS:
            return self.partition_min_s, self.partition_max_s
        return self.fault_min_s, self.fault_max_s


# The full tier runs the cadence of ../shared/reliability.md; the CI tier scales it down so
# that about 10,000 deductions see every kind of fault in a few minutes. A partition is not
# scaled down: it has to outlast the run's deadlines (chaos.harness.PROCESS_ENV: AMQP heartbeat
# 5 s, so about 10-15 s until the broker drops a silent worker; relay claim 14 s; relay
# leader 5 s after a 5 s confirm timeout; idle in transaction 10 s).
TIERS = {
    "full": Cadence(
        healthy_s=20.0, fault_min_s=10.0, fault_max_s=30.0, partition_min_s=30.0, partition_max_s=45.0
    ),
    "ci": Cadence(
        healthy_s=5.0, fault_min_s=3.0, fault_max_s=8.0, partition_min_s=20.0, partition_max_s=28.0
    ),
}


@dataclass
class Fault:
    """One planned fault, and (once run) what happened."""

    index: int
    kind: str
    at_s: float  # planned start, seconds after the load started
    duration_s: float
    params: dict[str, Any]
    started_s: float | None = None  # actual start and heal, seconds after the load started
    healed_s: float | None = None
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _fractions(rng: random.Random, count: int) -> list[float]:
    return [round(rng.random(), 4) for _ in range(count)]


def _params(kind: str, rng: random.Random) -> dict[str, Any]:
    """What the fault of ``kind`` will need at run time, drawn from ``rng`` in a fixed order."""
    if kind == "worker_child_kill":
        kills = rng.randint(1, 3)
        return {"kills": kills, "victims": _fractions(rng, kills), "offsets": sorted(_fractions(rng, kills))}
    if kind in {"worker_kill", "worker_term"}:
        return {"victim": round(rng.random(), 4)}
    if kind == "relay_kill":
        return {"point": rng.choice(RELAY_FAULT_POINTS)}
    if kind == "broker_restart":
        return {"node": round(rng.random(), 4)}  # which cluster node, on a cluster
    if kind == "pg_terminate":
        rounds = rng.randint(1, 3)
        return {
            "rounds": rounds,
            "offsets": sorted(_fractions(rng, rounds)),
            "producers_too": rng.random() < 0.5,
        }
    if kind == "redis":
        return {"restart": rng.random() < 0.5, "down_s": round(rng.uniform(0.5, 1.5), 1)}
    if kind == "duplicate_publish":
        count = rng.randint(5, 30)
        return {"count": count, "picks": _fractions(rng, count), "outcomes_share": 0.3}
    if kind == "queue_remove":
        count = rng.randint(1, 4)
        return {"count": count, "queues": ["beans" if rng.random() < 0.7 else "trades" for _ in range(count)]}
    if kind == "poison":
        kinds = list(POISON_KINDS)
        rng.shuffle(kinds)
        return {"kinds": kinds[: rng.randint(1, len(kinds))], "offset": round(rng.random(), 4)}
    if kind == "leader_kill":
        return {"queue": "beans"}
    if kind == "db_primary_kill":
        return {}
    if kind in PARTITION_KINDS:
        # Most of the time the cut-off worker is made the relay's leader first: the lead must move.
        return {"relay_lead": rng.random() < 0.7}
    raise ValueError(f"unknown fault kind {kind!r}")


def schedule_make(
    *, seed: int, duration_s: float, cadence: Cadence, kinds: tuple[str, ...] = FAULT_KINDS
) -> list[Fault]:
    """Return the faults of a run of ``duration_s`` seconds: the same list for the same arguments."""
    rng = random.Random(seed)  # noqa: S311 - reproducible chaos, not cryptography
    faults: list[Fault] = []
    bag: list[str] = []
    at = cadence.healthy_s
    while at < duration_s and len(faults) < MAX_FAULTS:
        if not bag:
            bag = list(kinds)
            rng.shuffle(bag)
        kind = bag.pop()
        duration = round(rng.uniform(*cadence.duration_range(kind)), 1)
        faults.append(Fault(len(faults), kind, round(at, 1), duration, _params(kind, rng)))
        at += duration + cadence.healthy_s
    return faults
