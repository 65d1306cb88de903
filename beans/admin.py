"""Audit console of the bean service: accounts and their ledger.

A balance changes only through a ledger entry, so the admin never edits one:
an account is opened through ``account_create`` (its opening balance becomes the
first ledger entry) and credited through ``account_credit``, from an action.
"""

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ActionForm
from django.contrib.auth import get_permission_codename
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.forms import ModelForm
from django.http import HttpRequest

from reliability import ReadOnlyModelAdmin

from . import services
from .exceptions import BeansError
from .models import Account, LedgerEntry

BIGINT_MAX = 2**63 - 1


class AccountCreateForm(forms.ModelForm):
    opening_balance = forms.IntegerField(
        min_value=0,
        max_value=BIGINT_MAX,
        initial=0,
        help_text="Becomes the first ledger entry; afterwards only credits and deductions move the balance.",
    )

    class Meta:
        model = Account
        fields = ("owner",)


class CreditForm(forms.Form):
    beans = forms.IntegerField(min_value=1, max_value=BIGINT_MAX)


class CreditActionForm(ActionForm):
    # Loose here and checked by ``CreditForm`` in the action: an invalid action form would
    # only tell the user "No action selected".
    beans = forms.CharField(required=False, label="Beans", widget=forms.NumberInput(attrs={"min": 1}))


@admin.register(Account)
class AccountAdmin(admin.ModelAdmin):
    add_form = AccountCreateForm
    action_form = CreditActionForm
    actions = ("credit_accounts",)
    list_display = ("id", "owner", "balance", "created_at", "updated_at")
    list_filter = ("created_at",)
    search_fields = ("=id", "owner")
    date_hierarchy = "created_at"
    ordering = ("-id",)

    def get_form(
        self, request: HttpRequest, obj: Account | None = None, change: bool = False, **kwargs: Any
    ) -> type[ModelForm]:
        if obj is None:
            kwargs.setdefault("form", self.add_form)
        return super().get_form(request, obj, change=change, **kwargs)

    def get_readonly_fields(self, request: HttpRequest, obj: Account | None = None) -> tuple[str, ...]:
        return () if obj is None else ("owner", "balance", "created_at", "updated_at")

    def save_model(self, request: HttpRequest, obj: Account, form: ModelForm, change: bool) -> None:
        if change:  # unreachable while change permission is refused; never bypass the service
            raise PermissionDenied("an account changes only through ledger entries")
        account = services.account_create(
            owner=form.cleaned_data["owner"], balance=form.cleaned_data["opening_balance"]
        )
        # The admin goes on with ``obj`` (log entry, redirect): make it the created row.
        obj.pk = account.pk
        obj.refresh_from_db()

    def has_change_permission(self, request: HttpRequest, obj: Account | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Account | None = None) -> bool:
        return False

    @admin.action(description="Credit the selected accounts with the given beans", permissions=["credit"])
    def credit_accounts(self, request: HttpRequest, queryset: QuerySet[Account]) -> None:
        form = CreditForm(request.POST)
        if not form.is_valid():
            problem = " ".join(str(error) for error in form.errors["beans"])
            self.message_user(request, f"No account credited: beans: {problem}", messages.ERROR)
            return
        beans = form.cleaned_data["beans"]
        note = f"admin credit by {request.user.get_username()}"
        credited = 0
        for account_id in queryset.order_by("pk").values_list("pk", flat=True):
            try:
                services.account_credit(account_id=account_id, beans=beans, note=note)
            except BeansError as exc:
                self.message_user(request, f"Account {account_id} not credited: {exc}", messages.ERROR)
            else:
                credited += 1
        if credited:
            self.message_user(request, f"Credited {beans} beans to {credited} account(s).", messages.SUCCESS)

    def has_credit_permission(self, request: HttpRequest) -> bool:
        # Typing over a balance is refused to everyone; crediting (through the ledger) is for
        # holders of the account's change permission.
        return request.user.has_perm(f"{self.opts.app_label}.{get_permission_codename('change', self.opts)}")


@admin.register(LedgerEntry)
class LedgerEntryAdmin(ReadOnlyModelAdmin):
    list_display = ("id", "account", "kind", "beans", "balance_after", "message_id", "trade_id", "created_at")
    list_filter = ("kind", "created_at")
    search_fields = ("=message_id", "=trade_id", "=account__id", "account__owner", "note")
    list_select_related = ("account",)
    ordering = ("-id",)
