"""Tests of the bean service (``beans/``): its services, HTTP API, models and admin."""
