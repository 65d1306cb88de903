"""Read what the checker needs from the database, with plain SQL (``snapshot_collect``)."""

from typing import Any

from chaos.checker.rows import DeadLetterRow, LedgerRow, LogRow, OutboxRow, Snapshot, TradeRow


def snapshot_collect(*, initial_balances: dict[int, int], queues: dict[str, int | None]) -> Snapshot:
    """Read everything the checker needs from the database, with plain SQL (one database)."""
    from django.conf import settings
    from django.db import connection

    from project.invariants import pipeline_violations
    from reliability.ops.retention import retention_cutoffs
    from reliability.selectors import stream_positions

    def rows(sql: str) -> list[tuple[Any, ...]]:
        with connection.cursor() as cursor:
            cursor.execute(sql)
            return list(cursor.fetchall())

    return Snapshot(
        initial_balances=dict(initial_balances),
        balances=dict(rows("SELECT id, balance FROM beans_account")),
        trades=[
            TradeRow(*row)
            for row in rows(
                "SELECT id, idempotency_key, account_id, beans, status, deduction_message_id::text, "
                "extract(epoch FROM created_at)::float8 FROM trades_trade"
            )
        ],
        ledger=[
            LedgerRow(*row)
            for row in rows(
                "SELECT id, account_id, beans, balance_after, message_id::text, trade_id "
                "FROM beans_ledgerentry WHERE kind = 'deduction'"
            )
        ],
        outbox=[
            OutboxRow(*row)
            for row in rows(
                "SELECT message_id::text, task_name, stream, seq, status, payload->>'deduction_message_id' "
                "FROM reliability_outboxmessage"
            )
        ],
        message_log=[
            LogRow(*row)
            for row in rows(
                "SELECT handler, message_id::text, stream, seq, outcome, redeliveries FROM reliability_messagelog"
            )
        ],
        dead_letters=[
            DeadLetterRow(*row)
            for row in rows(
                "SELECT id, handler, reason, message_id::text, envelope->>'message_id', detail "
                "FROM reliability_deadletter ORDER BY id"
            )
        ],
        parked=int(rows("SELECT count(*) FROM reliability_parkedmessage")[0][0]),
        streams=stream_positions(),
        gaps_escalated=int(
            rows("SELECT count(*) FROM reliability_streamgap WHERE status = 'escalated'")[0][0]
        ),
        queues=dict(queues),
        code_violations=pipeline_violations(),
        periodic_tasks={str(entry["task"]) for entry in settings.CELERY_BEAT_SCHEDULE.values()},
        retention_cutoffs={table: cutoff.timestamp() for table, cutoff in retention_cutoffs().items()},
    )
