"""The image service: image records and their bytes' bookkeeping (`loom.image.v1`).
See README.md."""
