"""Tests of the project around them: settings and security, database roles, broker
administration, a fresh machine, migrations, repartitioning and the example on the wheel.
"""
