from typing import Any

from django.core.management.base import BaseCommand, CommandError

from beans.contracts import DEDUCT_TASK
from reliability.models import OutboxMessage, StreamCounter
from reliability.produce.outbox import stream_queue_move
from reliability.selectors import queue_depths, stream_positions
from trades.services import deduction_queue


class Command(BaseCommand):
    help = (
        "Move deduction streams to the queue partitions of the current settings "
        "(TRADES_QUEUE_PARTITIONS), once the pipeline is drained."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--apply", action="store_true", help="make the change (default: show it)")

    def handle(self, *args: Any, apply: bool, **options: Any) -> None:
        problems = self._not_drained()
        moves = []
        for counter in StreamCounter.objects.filter(task_name=DEDUCT_TASK).order_by("stream"):
            index = int(counter.stream.rsplit(".", 1)[1])
            target = deduction_queue(index)
            if counter.queue != target:
                moves.append((counter.stream, counter.queue, target))
        for stream, old, new in moves:
            self.stdout.write(f"{stream}: {old} -> {new}")
        if not moves:
            self.stdout.write("every stream already goes to its partition")
            return
        if problems:
            raise CommandError("not drained, nothing moved:\n  " + "\n  ".join(problems))
        if not apply:
            self.stdout.write("drained; run again with --apply to move them")
            return
        for stream, _, new in moves:
            stream_queue_move(stream=stream, queue=new)
        self.stdout.write(f"moved {len(moves)} streams")

    def _not_drained(self) -> list[str]:
        problems = []
        pending = OutboxMessage.objects.filter(
            task_name=DEDUCT_TASK, status=OutboxMessage.Status.PENDING
        ).count()
        if pending:
            problems.append(f"{pending} deductions are still in the outbox")
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
