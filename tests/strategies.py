"""Hypothesis strategies and settings shared by the property-based tests."""

import os
from typing import Any

from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

# The unit tier (make test-fast) runs each property on this share of its examples, as Hypothesis'
# own advice for a development loop has it; make test runs every example.
EXAMPLES_SHARE = float(os.environ.get("TEST_PROPERTY_EXAMPLES_SHARE", "1"))


def examples(count: int) -> Any:
    """Settings of a property test: ``count`` examples (times the tier's share, at least 10), no
    deadline, no example database."""
    return hypothesis_settings(
        max_examples=max(10, round(count * EXAMPLES_SHARE)),
        deadline=None,
        database=None,  # no .hypothesis/ directory in the work tree; a failure prints its reproduction
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def json_values(*, finite: bool = False) -> st.SearchStrategy[Any]:
    """Any JSON value, small; ``finite``: no NaN or infinities (they compare unequal to themselves)."""
    scalars = (
        st.none()
        | st.booleans()
        | st.integers()
        | st.integers(min_value=-(2**80), max_value=2**80)
        # NaN and infinities too unless finite: Python's json writes and reads them.
        | st.floats(allow_nan=not finite, allow_infinity=not finite)
        | st.text(max_size=20)
    )
    return st.recursive(
        scalars,
        lambda children: (
            st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
        ),
        max_leaves=12,
    )
