"""Loom's benchmarks: the boot storm, the scheduler, and the scaling sweep (`make bench`)."""
