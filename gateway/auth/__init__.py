"""Tokens (signed, expiring) and the request context with its roles and policy checks."""
