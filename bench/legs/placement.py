"""Placement alone: what one placed trade costs in CPU, and the throughput that alone allows.

``--placement-trades`` calls of ``trade_place`` in the bench's own process, nothing else running
(the relay's fast path off: the transaction alone).
"""

import os
import time
from pathlib import Path

from bench.common import BEANS, database_reset, log
from harness.database import scalar


def measure(trades: int) -> dict[str, float]:
    """CPU one placed trade costs by itself: ``trade_place`` in this process, nothing else running.

    Its transaction (trade, stream counter, outbox row) is the part of the pipeline that
    cannot be batched without changing the API: the CPU of this process plus that of its
    PostgreSQL backend, per trade, bounds the end-to-end throughput at
    cpu_count / cost even if relaying and consuming were free.
    """
    from django.db import connection
    from django.test import override_settings

    from trades.services import trade_place

    accounts = database_reset()
    backend = scalar("SELECT pg_backend_pid()")
    tick = os.sysconf("SC_CLK_TCK")

    def backend_cpu() -> float:
        fields = Path(f"/proc/{backend}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick

    with override_settings(RELIABILITY_RELAY_FAST_PATH=False):  # the transaction alone
        for i in range(50):
            trade_place(account_id=accounts[i % len(accounts)], beans=BEANS)
        wall, own, db = time.perf_counter(), time.process_time(), backend_cpu()
        for i in range(trades):
            trade_place(account_id=accounts[i % len(accounts)], beans=BEANS)
        wall, own, db = time.perf_counter() - wall, time.process_time() - own, backend_cpu() - db
    connection.close()
    cost_ms = (own + db) * 1000 / trades
    placement = {
        "trades": trades,
        "wall_ms": wall * 1000 / trades,
        "python_cpu_ms": own * 1000 / trades,
        "postgres_cpu_ms": db * 1000 / trades,
        "ceiling_per_s": (os.cpu_count() or 1) * 1000 / cost_ms,
    }
    log(
        f"  placement alone: {placement['python_cpu_ms']:.2f} ms Python + "
        f"{placement['postgres_cpu_ms']:.2f} ms PostgreSQL CPU per trade -> ceiling "
        f"{placement['ceiling_per_s']:.0f} trades/s on {os.cpu_count()} cores"
    )
    return placement
