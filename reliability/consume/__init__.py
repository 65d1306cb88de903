"""The consumer side, one module per step of a delivery: ``task`` (the exactly-once task and the
paths through the steps), ``verify``, ``effect`` (dedupe, then ``order`` parks or ``apply``
applies), ``batch``, ``heartbeat``, ``refuse`` (dead-letter), ``ack`` (acknowledge or requeue);
and the records they write: the message log, stream positions and gaps, dead letters.
"""
