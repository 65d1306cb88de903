"""Tests of ``reliability.produce``: the outbox."""
