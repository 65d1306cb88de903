"""Tests of the trade service (``trades/``): its services, HTTP API, models and status counts."""
