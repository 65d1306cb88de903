"""The trade and bean services' own settings."""

from django.core.exceptions import ImproperlyConfigured

from .env import env_int

# Refuse trades above this many beans (a typo guard, not a business limit).
TRADES_MAX_BEANS = env_int("TRADES_MAX_BEANS", 1_000_000_000)
# At most this many trades in one batch placement (POST /api/trades/batch/), one transaction.
TRADES_BATCH_MAX = env_int("TRADES_BATCH_MAX", 100)
if not 1 <= TRADES_BATCH_MAX <= 1000:
    raise ImproperlyConfigured("TRADES_BATCH_MAX must be between 1 and 1000")

# Deductions are sequenced per stream; an account always maps to the same stream.
TRADES_DEDUCTION_STREAMS = env_int("TRADES_DEDUCTION_STREAMS", 8)
# The bean service's queue, split into partitions: each its own quorum queue (own bound, leader
# and consumers); a stream always goes to the same partition. Changing either number is a
# drain-and-switch (README, "Scaling and back-pressure"; manage.py repartition).
TRADES_QUEUE_PARTITIONS = env_int("TRADES_QUEUE_PARTITIONS", 1)
if not 1 <= TRADES_QUEUE_PARTITIONS <= TRADES_DEDUCTION_STREAMS:
    raise ImproperlyConfigured("TRADES_QUEUE_PARTITIONS must be between 1 and TRADES_DEDUCTION_STREAMS")
BEANS_QUEUES = (
    ["beans"] if TRADES_QUEUE_PARTITIONS == 1 else [f"beans.{p}" for p in range(TRADES_QUEUE_PARTITIONS)]
)
