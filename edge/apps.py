from django.apps import AppConfig


class EdgeConfig(AppConfig):
    """The HTTP edge: API clients (``ApiKey``), their authentication, scopes and rate limits."""

    name = "edge"
    verbose_name = "API clients"
    default_auto_field = "django.db.models.BigAutoField"
