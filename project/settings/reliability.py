"""The reliability library's settings: every RELIABILITY_* has its default and meaning in
reliability/conf.py; here, what the environment sets, and what this project decides."""

import os
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from reliability.conf import DEFAULTS as _LIBRARY_DEFAULTS
from reliability.conf import environment_settings

from .base import BASE_DIR, IS_PRODUCTION
from .database import DATABASES
from .env import env_str

# The reliability library's settings: any RELIABILITY_* set in the environment, parsed as its
# default's type. Every one has its default and meaning in reliability/conf.py; the rules that
# tie them together are system checks (reliability/checks.py), which a worker runs before it
# consumes. Below, only what this project decides differently, and what Celery must agree with.
globals().update(environment_settings(os.environ))


def reliability_setting(name: str) -> Any:
    return globals().get(name, _LIBRARY_DEFAULTS[name])


# Message signing (reliability/signing.py): RELIABILITY_SIGNING_KEYS="key_id:secret,..." - every
# key is accepted on consumption; RELIABILITY_SIGNING_KEY_ID (default: the first) signs. Rotate
# by adding a key everywhere, switching the active id, and dropping the old key later. A
# development key unless set; production refuses it.
if "RELIABILITY_SIGNING_KEYS" not in globals():
    RELIABILITY_SIGNING_KEYS = {"dev": b"development-signing-key-never-use-in-production"}
if IS_PRODUCTION and "dev" in reliability_setting("RELIABILITY_SIGNING_KEYS"):
    raise ImproperlyConfigured(
        "DJANGO_ENV=production needs RELIABILITY_SIGNING_KEYS of its own (not the dev key)"
    )
if IS_PRODUCTION and reliability_setting("RELIABILITY_FAULT_INJECTION"):
    raise ImproperlyConfigured("RELIABILITY_FAULT_INJECTION cannot be enabled in production")
# Fault markers (reliability/faults.py) with the project's other run-time files.
RELIABILITY_FAULT_DIR = env_str("RELIABILITY_FAULT_DIR", str(BASE_DIR / ".run" / "faults"))

# Databases holding reliability tables (each side's outbox and message log live with its data).
RELIABILITY_DATABASES = list(DATABASES)
