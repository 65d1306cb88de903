"""The code the proving tools share: the tests, the bench and the chaos run.

Tools sit above the product: they import ``reliability``, ``trades``, ``beans`` and ``project``,
never the reverse (an import-linter contract keeps it so). Importing a module here never sets
Django up; what needs settings imports them when called.

- ``polling``: wait, bounded, until something holds (``poll_until``, ``eventually``).
- ``database``: one value or every row of a query (``scalar``, ``rows``), a database made afresh
  and migrated (``database_migrated``).
- ``processes``: subprocesses in sessions of their own (``Child``, ``CeleryProcess``), commands,
  leftovers of dead runs (``orphans``).
- ``environment``: the environment scrub (``isolated_env``) and the test subprocesses' environment.
- ``ports``: free TCP ports on 127.0.0.1.
- ``web``: the web tier as operators run it (``Gunicorn``); ``browser``: headless Chromium.
- ``rabbitmq``: probes of the broker's queues; ``broker_admin``: vhosts, users, policies.
- ``proxies``: a TCP proxy that goes silent (a partition), and URLs rewritten through it.
- ``clusters``, ``rabbitmq_cluster``, ``postgres_cluster``: private clusters on this host.
"""
