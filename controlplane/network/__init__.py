"""The network domain: networks, subnets, ports and their addresses, security groups."""
