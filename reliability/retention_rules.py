"""The retention rule, checked when settings load (no Django imports here).

A message-log row is the only thing that recognises a redelivery, so the dedupe
window must outlast every way a message can come back.
"""


def retention_horizons_check(
    *,
    dedupe_window_s: float,
    outbox_retention_s: float,
    max_message_age_s: float,
    reconcile_grace_s: float,
    reconcile_max_attempts: int,
    dead_letter_replay_window_s: float,
) -> list[str]:
    """Return what is wrong with the retention settings (empty when they are safe)."""
    problems = []
    reconcile_horizon_s = reconcile_grace_s * (reconcile_max_attempts + 1)
    horizons = {
        "RELIABILITY_MAX_MESSAGE_AGE_S": max_message_age_s,
        "the reconciler's horizon (RELIABILITY_RECONCILE_GRACE_S x (RELIABILITY_RECONCILE_MAX_ATTEMPTS + 1))": (
            reconcile_horizon_s
        ),
        "RELIABILITY_DEAD_LETTER_REPLAY_WINDOW_S": dead_letter_replay_window_s,
    }
    for name, horizon in horizons.items():
        if dedupe_window_s <= horizon:
            problems.append(
                f"RELIABILITY_DEDUPE_WINDOW_S ({dedupe_window_s:g}s) must exceed {name} ({horizon:g}s): "
                "raise RELIABILITY_DEDUPE_WINDOW_S or lower the other"
            )
    if outbox_retention_s <= reconcile_horizon_s:
        problems.append(
            f"RELIABILITY_OUTBOX_RETENTION_S ({outbox_retention_s:g}s) must exceed the reconciler's horizon "
            f"({reconcile_horizon_s:g}s), or a lost message can no longer be re-published"
        )
    return problems
