"""The HTTP edge both services sit behind: API clients and their keys, authentication, scopes,
rate limits, request parsing and the one shape of refusal.

``trades`` and ``beans`` declare what their routers need from here (``edge.http.security``,
``edge.http.parsing``); ``project.api.routes`` assembles their routers into the API.
"""
