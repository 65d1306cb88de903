"""Tests of ``edge/``: API keys, scopes and the rate limit, and the move of ApiKey into the app."""
