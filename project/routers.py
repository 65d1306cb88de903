"""Database routing: the bean service's data (and its outbox and message log) may live apart."""

from typing import Any

from django.conf import settings
from django.db.models import Model


class ServiceDatabaseRouter:
    """Send the ``beans`` app to ``settings.BEANS_DATABASE``; everything else to ``default``.

    The reliability tables exist in every database of ``RELIABILITY_DATABASES``,
    because each side's outbox and message log must commit with its own data;
    its services always name the database explicitly (``using=``).
    """

    def db_for_read(self, model: type[Model], **hints: Any) -> str | None:
        return settings.BEANS_DATABASE if model._meta.app_label == "beans" else None

    def db_for_write(self, model: type[Model], **hints: Any) -> str | None:
        return self.db_for_read(model, **hints)

    def allow_migrate(self, db: str, app_label: str, model_name: str | None = None, **hints: Any) -> bool:
        if app_label == "beans":
            return db == settings.BEANS_DATABASE
        if app_label == "reliability":
            return db in settings.RELIABILITY_DATABASES
        return db == "default"
