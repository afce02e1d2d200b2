"""Servers and their life: create, read, list, change, delete (loom.conductor.v1.ServersService)."""
