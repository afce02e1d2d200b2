"""The identity service: projects, users, roles, role assignments and authentication
(`loom.identity.v1`). See README.md."""
