from django.conf import settings
from django.contrib import admin
from django.urls import path

from beans.views import account_detail
from trades.views import trade_create, trade_detail

urlpatterns = [
    path(settings.ADMIN_URL, admin.site.urls),
    path("api/trades/", trade_create, name="trade-create"),
    path("api/trades/<int:trade_id>/", trade_detail, name="trade-detail"),
    path("api/accounts/<int:account_id>/", account_detail, name="account-detail"),
]
