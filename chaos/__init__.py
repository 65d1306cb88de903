"""Chaos soak: a seeded, randomized fault schedule under load, then a checker of I1-I10.

``python -m chaos.run`` (``make chaos``) runs it; ``schedule`` draws the faults from the
seed, ``checker`` compares what the load generator recorded with the database and
the broker. See README, "Chaos soak", and ``../shared/reliability.md``.
"""
