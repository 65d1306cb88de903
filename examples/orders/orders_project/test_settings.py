"""Settings of the example's tests: ``python manage.py test --settings=orders_project.test_settings``.

The real settings, plus what lets a test watch the guarantees within seconds: a signing key of
the tests' own (unless one is set), reconciler and heartbeat periods of a second, and the fault
points, switched on per process from the environment (never in production).
"""

import os
import tempfile

# Before the settings read it; the worker and beat processes a test starts inherit it.
os.environ.setdefault("RELIABILITY_SIGNING_KEYS", "test:test-only-signing-key-never-use-in-production")

from orders_project.settings import *  # noqa: F403
from orders_project.settings import DATABASES
from reliability import beat_schedule

# A test database of the example's own, whatever database DATABASE_URL names.
DATABASES["default"]["TEST"] = {"NAME": "test_orders_example"}

# A gap (a lost message) is re-published after a second, found within a second.
RELIABILITY_RECONCILE_GRACE_S = 1.0
CELERY_BEAT_SCHEDULE = beat_schedule(reconcile_s=1, heartbeat_s=1, dead_letters_s=1)
RELIABILITY_REQUEUE_PAUSE_MAX_S = 0.05

# e.g. RELIABILITY_FAULTS="consume.after_commit=kill:1": the first process to pass that point dies.
RELIABILITY_FAULT_INJECTION = os.environ.get("RELIABILITY_FAULT_INJECTION", "") == "true"
RELIABILITY_FAULTS = os.environ.get("RELIABILITY_FAULTS", "")
RELIABILITY_FAULT_DIR = os.environ.get(
    "RELIABILITY_FAULT_DIR", os.path.join(tempfile.gettempdir(), "orders-example-faults")
)
