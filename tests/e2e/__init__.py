"""End to end: real Celery workers and beat, RabbitMQ and PostgreSQL, and the faults the
guarantees must survive (kills, broker restarts, partitions, a cluster leader, the chaos soak).
"""
