from django.conf import settings
from django.contrib import admin
from django.urls import path

from project.api.routes import api
from reliability import healthz, metrics, pipeline_health_page, readyz

# The admin index links the pipeline health page (reliability/templates/admin/reliability_index.html).
admin.site.index_template = "admin/reliability_index.html"

urlpatterns = [
    # Before admin.site.urls: the admin's catch-all view would answer this path otherwise.
    path(
        f"{settings.ADMIN_URL}pipeline-health/",
        admin.site.admin_view(pipeline_health_page),
        name="pipeline-health",
    ),
    path(settings.ADMIN_URL, admin.site.urls),
    path("metrics", metrics, name="metrics"),
    # Liveness and readiness for a load balancer or an orchestrator.
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    # The HTTP API (project/api/routes.py): trades and accounts, /api/openapi.json, /api/docs.
    path("api/", api.urls),
]
