"""Network v2.0 (the Neutron API subset): networks, subnets, ports, security groups and
their rules, quotas, extensions, translated to loom.network.v1."""
