"""The HTTP API's front door: authentication, rate limits, request parsing and error answers.

``routes`` assembles the API from the services' routers (``trades.api``, ``beans.api``);
``security`` and ``parsing`` are what those routers declare on their operations.
"""
