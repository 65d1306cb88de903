class ApiKeyError(Exception):
    """A key cannot be created or revoked as asked; the message says why."""
