from typing import Any

from django.core.management.base import BaseCommand, CommandError

from beans.contracts import DEDUCT_TASK
from reliability.exceptions import StreamsNotDrained
from reliability.ops.repartition import streams_repartition_apply, streams_repartition_plan
from trades.services import deduction_stream_queue


class Command(BaseCommand):
    help = (
        "Move deduction streams to the queue partitions of the current settings "
        "(TRADES_QUEUE_PARTITIONS), once the pipeline is drained."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--apply", action="store_true", help="make the change (default: show it)")

    def handle(self, *args: Any, apply: bool, **options: Any) -> None:
        plan = streams_repartition_plan(task_name=DEDUCT_TASK, queue_of=deduction_stream_queue)
        for move in plan.moves:
            self.stdout.write(f"{move.stream}: {move.old_queue} -> {move.new_queue}")
        if not plan.moves:
            self.stdout.write("every stream already goes to its partition")
            return
        try:
            moved = streams_repartition_apply(plan, dry_run=not apply)
        except StreamsNotDrained as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            f"moved {moved} streams" if apply else "drained; run again with --apply to move them"
        )
