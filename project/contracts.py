"""Moved: the message contract is the bean service's published interface, ``beans.contracts``.
This name stays for chaos/ until it imports the new one; nothing in the project's own code imports it."""

from beans.contracts import DEDUCT_TASK, OUTCOME_QUEUE, OUTCOME_TASK

__all__ = ["DEDUCT_TASK", "OUTCOME_QUEUE", "OUTCOME_TASK"]
