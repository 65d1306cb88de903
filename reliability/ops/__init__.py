"""Operations: the reconciler, the dead-letter workflow (drain, replay, discard), retention,
degrade mode, health figures and event counters.
"""
