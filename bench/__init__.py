"""Benchmarks: ``bench/run.py`` compares the exactly-once pipeline with plain Celery and raw AMQP."""
