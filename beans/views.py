"""HTTP interface of the bean service (read-only)."""

from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from . import selectors
from .models import Account


@require_GET
def account_detail(request: HttpRequest, account_id: int) -> JsonResponse:
    try:
        account = selectors.account_get(account_id=account_id)
    except Account.DoesNotExist:
        return JsonResponse({"error": f"account {account_id} does not exist"}, status=404)
    return JsonResponse(
        {
            "id": account.pk,
            "owner": account.owner,
            "balance": account.balance,
            "updated_at": account.updated_at.isoformat(),
        }
    )
