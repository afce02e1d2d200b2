"""Placement API (read-only) at /placement, translated to the scheduler's
ResourceProvidersService."""
