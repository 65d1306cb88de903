"""Tests of ``reliability.ids``: the carrier, the snowflake generator, leases, the generators."""
