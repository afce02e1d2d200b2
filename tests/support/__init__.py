"""Test helpers: real PostgreSQL databases, real nats-servers, libvirt test:/// hosts."""
