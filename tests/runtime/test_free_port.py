"""free_port hands out ports that outgoing connections cannot take before the service binds."""

from __future__ import annotations

import socket

from controlplane.runtime.natsserver import ephemeral_port_range, free_port


def test_free_ports_lie_below_the_ephemeral_range_that_outgoing_connections_draw_from() -> None:
    low, _ = ephemeral_port_range()
    ports = [free_port() for _ in range(50)]
    assert all(port < low for port in ports), [p for p in ports if p >= low]


def test_a_free_port_can_be_bound_by_the_service_that_asked_for_it() -> None:
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        assert s.getsockname()[1] == port


def test_one_process_is_never_handed_the_same_port_twice() -> None:
    """Services started later bind their ports later: a port handed out and not bound yet
    must not be handed out again (two services of one stack would then race for it)."""
    ports = [free_port() for _ in range(1000)]
    assert len(set(ports)) == len(ports)
