"""The bench's legs, one module each, whose entry function measures one thing and logs its figures.

``bench/run.py`` runs them in the order of ``LEGS``: the first seven in every repeat, the last
two once after the repeats (each on a database of its own). Shared pieces: ``bench/common.py``
(environment, processes, broker, database), ``bench/pipeline.py`` (workers, beat, producers),
``bench/web.py`` (web tier, load generator), ``bench/figures.py`` (latencies, CPU) and
``bench/histories.py`` (two histories side by side).
"""

LEGS = (
    "placement",  # placement.py: one placed trade's CPU alone, the throughput ceiling it sets
    "exactly_once",  # exactly_once.py: the pipeline end to end, one trade per placement call
    "batched_placement",  # batched_placement.py: the same, --placement-batch trades per call
    "http",  # http.py: the pipeline through the web tier, one trade per POST /api/trades/
    "alternatives",  # alternatives.py: best-practice Celery, django-celery-outbox, a no-op view
    "baseline",  # baseline.py: plain at-least-once Celery, one UPDATE per message
    "raw_amqp",  # raw_amqp.py: persistent messages through the broker alone
    "metrics_scrape",  # metrics_scrape.py: a /metrics scrape at 1k vs --metrics-scrape-rows rows
    "history",  # history.py: the daily pages and commands at 10k vs --history-rows rows
)
