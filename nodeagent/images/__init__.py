"""Images on a host: sources (image service, shared directory), the verified base cache,
and qcow2 overlays for guests."""
