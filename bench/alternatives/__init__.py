"""What a user would pick instead of the exactly-once pipeline, served by the same web tier.

A bench-only Django app, installed by ``bench.settings`` alone (never by ``project.settings``):

* **best-practice Celery** (``best_practice``): the view commits a trade, then
  ``transaction.on_commit(lambda: deduct.delay(...))``; publisher confirms, ``acks_late``,
  ``reject_on_worker_lost``, a durable quorum queue; the task deducts in one transaction.
  At-least-once: a redelivery deducts again.
* **django-celery-outbox** (``outbox``): the view commits the trade and the outbox row
  (``OutboxCelery``) in one transaction; ``manage.py celery_outbox_relay`` publishes; the
  same task consumes. At-least-once too (the library says consumers must be idempotent).
* **the ceiling**: a view that parses the same request and answers 201, nothing else.

``bench/run.py`` drives them through ``/bench/...`` (``bench.urls``).
"""
