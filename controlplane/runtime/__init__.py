"""Process plumbing every Loom service shares: logging, gRPC serving, the NATS bus, signals.

The node agent and the gateway may import this package; it holds no business logic
and no database access.
"""
