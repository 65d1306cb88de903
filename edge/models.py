"""API clients: the keys that authenticate calls to the HTTP API.

Design overview
---------------
* A key is ``bk_<prefix>_<secret>``. The prefix is public: it names the key in listings and
  logs and finds its row. Only a SHA-256 digest of the whole key is stored, so a database
  dump does not hand out working keys; a key is shown once, when it is created.
* SHA-256 and not a password hash: the secret is 256 random bits, not something a person
  chose, so a fast digest cannot be brute-forced and authenticating costs microseconds.
* A key is never deleted, only revoked (``revoked_at``): its trades keep naming their client
  (``Trade.client_id``), and its Idempotency-Keys stay its own.
* Scopes say what a key may call; the database refuses an unknown scope.
"""

from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models import Q
from django.utils import timezone


class ApiScope(models.TextChoices):
    TRADES_WRITE = "trades:write", "Place trades"
    TRADES_READ = "trades:read", "Read trades"
    ACCOUNTS_READ = "accounts:read", "Read accounts"


class ApiKey(models.Model):
    Scope = ApiScope

    name = models.CharField(max_length=100, help_text="Who uses the key, e.g. the client application.")
    prefix = models.CharField(max_length=16, editable=False)
    digest = models.CharField(max_length=64, editable=False)  # SHA-256 of the whole key, hex
    scopes = ArrayField(models.CharField(max_length=32, choices=ApiScope.choices))
    # Requests a second this key may send; 0 means the project's API_RATE_LIMIT_PER_S.
    rate_limit_per_s = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        # The table of the project app, where the model was made: moved without touching the database.
        db_table = "project_apikey"
        verbose_name = "API key"
        constraints = [
            models.UniqueConstraint(fields=["prefix"], name="api_key_prefix_unique"),
            # One live key per name, so "api_keys revoke NAME" is never ambiguous.
            models.UniqueConstraint(
                fields=["name"], condition=Q(revoked_at__isnull=True), name="api_key_live_name_unique"
            ),
            models.CheckConstraint(
                condition=Q(scopes__contained_by=ApiScope.values) & ~Q(scopes=[]),
                name="api_key_scopes_known",
            ),
        ]

    def __str__(self) -> str:
        state = "revoked" if self.revoked_at else ", ".join(self.scopes)
        return f"API key {self.name} (bk_{self.prefix}_…, {state})"
