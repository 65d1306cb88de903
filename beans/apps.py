from django.apps import AppConfig


class BeansConfig(AppConfig):
    name = "beans"
    verbose_name = "Beans (accounts and ledger)"
    default_auto_field = "django.db.models.BigAutoField"
