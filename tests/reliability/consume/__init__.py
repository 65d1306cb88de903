"""Tests of ``reliability.consume``: the single and batch paths, verification, streams, dead letters."""
