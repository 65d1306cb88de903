"""Moved: the services of API keys are ``edge.services`` and ``edge.selectors``. This name stays
for bench/ and chaos/ until they import the new ones; nothing in the project's own code imports it."""

from edge.exceptions import ApiKeyError
from edge.selectors import api_key_authenticate, api_keys_list
from edge.services import api_key_create, api_key_revoke

__all__ = ["ApiKeyError", "api_key_authenticate", "api_key_create", "api_key_revoke", "api_keys_list"]
