"""The consumer side: the exactly-once task (single and batch paths, parking for ordered
streams), the message log, stream positions and gaps, and recording a dead letter.
"""
