"""Moved to ``edge.http.parsing``. This name stays for bench/ and chaos/ until they import the
new one; nothing in the project's own code imports it."""

from edge.http.parsing import Error, JsonBodyParser, error_handlers_install, max_body_bytes

__all__ = ["Error", "JsonBodyParser", "error_handlers_install", "max_body_bytes"]
