"""What the services' routers declare on their operations: ``security`` (API keys, scopes, the
rate limit) and ``parsing`` (bodies, and every refusal as ``{"error": ...}``)."""
