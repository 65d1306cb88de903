from django.apps import AppConfig


class AlternativesConfig(AppConfig):
    name = "bench.alternatives"
    label = "bench_alternatives"
    verbose_name = "Bench: the alternatives to the exactly-once pipeline"
    default_auto_field = "django.db.models.BigAutoField"
