from django.conf import settings
from django.contrib import admin
from django.urls import path

from beans.views import account_detail
from reliability import healthz, metrics, pipeline_health_page, readyz
from trades.views import account_trades, trade_create, trade_detail, trades_create_batch

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
    path("api/trades/", trade_create, name="trade-create"),
    path("api/trades/batch/", trades_create_batch, name="trades-create-batch"),
    path("api/trades/<int:trade_id>/", trade_detail, name="trade-detail"),
    path("api/accounts/<int:account_id>/", account_detail, name="account-detail"),
    path("api/accounts/<int:account_id>/trades/", account_trades, name="account-trades"),
]
