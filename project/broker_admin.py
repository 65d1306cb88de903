"""Moved to ``harness.broker_admin`` (it serves the tools only).

These two names stay for ``bench/run.py`` until its split into one module per leg lands; then
this module goes (and with it the import-linter exception in pyproject.toml).
"""

from harness.broker_admin import BrokerAdminError, broker_admin

__all__ = ["BrokerAdminError", "broker_admin"]
