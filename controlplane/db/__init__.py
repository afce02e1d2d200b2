"""Loom's schema and database access.

The conductor and scheduler each write only their own tables."""
