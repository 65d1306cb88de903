"""API keys in the admin: create one (shown once), see them all, revoke; a key is never edited."""

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from .exceptions import ApiKeyError
from .models import ApiKey
from .services import api_key_create, api_key_revoke


class ApiKeyCreationForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(choices=ApiKey.Scope.choices, widget=forms.CheckboxSelectMultiple)

    class Meta:
        model = ApiKey
        fields = ("name", "scopes", "rate_limit_per_s")

    def clean_name(self) -> str:
        name = self.cleaned_data["name"].strip()
        if ApiKey.objects.filter(name=name, revoked_at__isnull=True).exists():
            raise forms.ValidationError("A live key has this name: revoke it first, or pick another name.")
        return name


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("name", "prefix", "scopes", "rate_limit_per_s", "created_at", "revoked_at")
    list_filter = ("revoked_at",)
    search_fields = ("name", "=prefix")
    date_hierarchy = "created_at"
    ordering = ("-id",)
    actions = ("revoke",)

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        if obj is None:
            kwargs["form"] = ApiKeyCreationForm
        return super().get_form(request, obj, change, **kwargs)

    def get_readonly_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> Any:
        if obj is None:
            return ()
        return ("name", "prefix", "scopes", "rate_limit_per_s", "created_at", "revoked_at")

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # revoke instead: the key's trades keep naming their client

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        if change:
            return  # nothing of a key is edited
        try:
            created, key = api_key_create(
                name=form.cleaned_data["name"],
                scopes=form.cleaned_data["scopes"],
                rate_limit_per_s=form.cleaned_data["rate_limit_per_s"],
            )
        except ApiKeyError as exc:  # a race with another creation under the same name
            raise forms.ValidationError(str(exc)) from exc
        # The admin's message and its history (LogEntry) name the key by str(obj): the row as created.
        for field in ApiKey._meta.concrete_fields:
            setattr(obj, field.attname, getattr(created, field.attname))
        messages.warning(request, f"The new key, shown this once (it is not stored, copy it now): {key}")

    @admin.action(description="Revoke the selected keys (their requests are refused from now on)")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        revoked = 0
        for api_key in queryset.filter(revoked_at__isnull=True):
            api_key_revoke(name_or_prefix=api_key.prefix)
            revoked += 1
        self.message_user(request, f"Revoked {revoked} key(s).", messages.SUCCESS)
