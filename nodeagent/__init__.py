"""Loom's node agent: turns compute commands into libvirt domains on its host."""

__version__ = "0.1.0"
