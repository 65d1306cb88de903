"""HTTP API of the bean service (read-only), mounted at ``/api/accounts/``."""

from datetime import datetime
from typing import Annotated, Any

from django.http import HttpRequest
from ninja import Path, Router, Schema

from edge.http.parsing import Error
from edge.http.security import Scope, requires

from . import selectors
from .models import Account

router = Router(tags=["accounts"])


class AccountOut(Schema):
    id: int
    owner: str
    balance: int
    updated_at: datetime


@router.get(
    "/{int:account_id}/",
    auth=requires(Scope.ACCOUNTS_READ),
    response={200: AccountOut, 401: Error, 403: Error, 404: Error, 429: Error},
    url_name="account-detail",
    summary="An account and its balance",
)
def account_detail(
    request: HttpRequest, account_id: Annotated[int, Path(ge=0)]
) -> tuple[int, dict[str, Any]]:
    try:
        account = selectors.account_get(account_id=account_id)
    except Account.DoesNotExist:
        return 404, {"error": f"account {account_id} does not exist"}
    return 200, {
        "id": account.pk,
        "owner": account.owner,
        "balance": account.balance,
        "updated_at": account.updated_at,
    }
