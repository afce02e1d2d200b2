"""Hypervisor drivers: the Protocols, the domain XML builder and the libvirt implementation."""
