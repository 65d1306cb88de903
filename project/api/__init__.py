"""The HTTP API, assembled: ``routes`` mounts the services' routers (``trades.api``, ``beans.api``)
behind the edge's body parser, rate limit and error answers (``edge.http``).

``parsing`` and ``security`` here are the old names of ``edge.http.parsing`` and
``edge.http.security``, kept for bench/ and chaos/ until they import the new ones.
"""
