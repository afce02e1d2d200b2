"""The catalog service: flavors, keypairs and quotas (`loom.catalog.v1`). See README.md."""
