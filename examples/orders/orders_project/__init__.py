"""The example project: an order service whose every order is invoiced exactly once."""

# Loaded with Django, so that tasks are bound to this app and `celery -A orders_project` finds it.
from .celery import app as celery_app

__all__ = ("celery_app",)
