"""Moving streams to other queues (new partitions), once nothing of theirs is in flight.

A stream's messages are ordered within one queue; moving it while some are still in the outbox,
in a queue or parked would let the new queue's consumer overtake the old one's. So a move is
planned first (``streams_repartition_plan``: which streams go where, and what is not drained), and
made only when the plan found everything drained (``streams_repartition_apply``).
"""

from collections.abc import Callable
from dataclasses import dataclass, field

from reliability.exceptions import StreamsNotDrained
from reliability.models import OutboxMessage, StreamCounter
from reliability.produce.outbox import stream_queue_move
from reliability.selectors import queue_depths, stream_positions


@dataclass(frozen=True)
class StreamMove:
    stream: str
    old_queue: str
    new_queue: str


@dataclass(frozen=True)
class RepartitionPlan:
    """The streams of ``task_name`` whose queue changes, and why they may not move yet (empty: drained)."""

    task_name: str
    moves: list[StreamMove] = field(default_factory=list)
    not_drained: list[str] = field(default_factory=list)


def streams_repartition_plan(
    *, task_name: str, queue_of: Callable[[str], str], using: str = "default"
) -> RepartitionPlan:
    """Plan to move each stream of ``task_name`` to ``queue_of(stream)``; moves nothing."""
    moves = [
        StreamMove(stream=counter.stream, old_queue=counter.queue, new_queue=queue_of(counter.stream))
        for counter in StreamCounter.objects.using(using).filter(task_name=task_name).order_by("stream")
    ]
    return RepartitionPlan(
        task_name=task_name,
        moves=[move for move in moves if move.old_queue != move.new_queue],
        not_drained=_not_drained(task_name, using),
    )


def streams_repartition_apply(plan: RepartitionPlan, *, dry_run: bool = False, using: str = "default") -> int:
    """Make the plan's moves (none with ``dry_run``); return how many.

    Refused (``StreamsNotDrained``) unless the plan found everything drained.
    """
    if plan.moves and plan.not_drained:
        raise StreamsNotDrained("not drained, nothing moved:\n  " + "\n  ".join(plan.not_drained))
    if not dry_run:
        for move in plan.moves:
            stream_queue_move(stream=move.stream, queue=move.new_queue, using=using)
    return len(plan.moves)


def _not_drained(task_name: str, using: str) -> list[str]:
    problems = []
    pending = (
        OutboxMessage.objects.using(using)
        .filter(task_name=task_name, status=OutboxMessage.Status.PENDING)
        .count()
    )
    if pending:
        problems.append(f"{pending} messages of {task_name} are still in the outbox")
    for name, depth in queue_depths().items():
        if depth:
            problems.append(f"queue {name} holds {depth} messages")
    for position in stream_positions():
        if position["produced_seq"] and position["consumed_watermark"] != position["produced_seq"]:
            problems.append(
                f"stream {position['stream']}: produced {position['produced_seq']}, "
                f"applied up to {position['consumed_watermark']}"
            )
    return problems
