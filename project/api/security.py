"""Moved to ``edge.http.security``. This name stays for bench/ and chaos/ until they import the
new one; nothing in the project's own code imports it."""

from edge.http.security import ApiKeyRateLimit, Scope, requires

__all__ = ["ApiKeyRateLimit", "Scope", "requires"]
