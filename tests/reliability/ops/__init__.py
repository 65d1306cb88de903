"""Tests of ``reliability.ops``: degrade mode, health and metrics, partitions, repartitioning."""
