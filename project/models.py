"""Moved: ``ApiKey`` is the edge app's (``edge.models``). This name stays for bench/ and chaos/
until they import the new one; nothing in the project's own code imports it."""

from edge.models import ApiKey, ApiScope

__all__ = ["ApiKey", "ApiScope"]
