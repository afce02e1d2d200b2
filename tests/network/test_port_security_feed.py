"""Security changes wait in the network domain until the compute service takes them to the
hosts: each take names the bound ports a change touched, on their hosts, at a revision
newer than any binding read before it."""

from __future__ import annotations

import asyncio
import uuid

from loom.compute.v1 import agent_bus_pb2 as agent
from loom.network.v1 import network_pb2 as pb

from tests.network.conftest import Net


async def _bind(
    net: Net, network_id: str, host: str, project: str = "p1"
) -> pb.BindDevicePortsResponse:
    return await net.stub.BindDevicePorts(
        pb.BindDevicePortsRequest(
            request_id=str(uuid.uuid4()),
            project_id=project,
            device_id=str(uuid.uuid4()),
            host=host,
            requested=[pb.RequestedPort(network_id=network_id)],
        )
    )


async def _take(net: Net, lease_s: float = 30.0) -> pb.TakePortSecurityChangesResponse:
    return await net.stub.TakePortSecurityChanges(
        pb.TakePortSecurityChangesRequest(lease_seconds=lease_s)
    )


async def _take_all(net: Net) -> dict[str, dict[str, agent.PortBinding]]:
    """Takes and acknowledges every waiting change: host -> port id -> binding."""
    taken = await _take(net)
    await net.stub.AckPortSecurityChanges(
        pb.AckPortSecurityChangesRequest(change_ids=taken.change_ids)
    )
    return {h.host: {p.port_id: p for p in h.ports} for h in taken.hosts}


def _members(binding: agent.PortBinding) -> set[str]:
    """The addresses the port's ingress rules from a remote group admit."""
    return {
        ip
        for r in binding.security_group_rules
        if r.direction == agent.RULE_DIRECTION_INGRESS and r.remote_group_id
        for ip in r.remote_group_member_ips
    }


def _ip(bound: pb.BindDevicePortsResponse) -> str:
    return bound.bindings[0].fixed_ips[0].ip_address


async def test_a_new_member_of_the_default_group_reaches_the_hosts_of_the_other_members(
    net: Net,
) -> None:
    network_id, _ = await net.network_with_subnet("10.40.0.0/24")
    a = await _bind(net, network_id, "h1")
    assert a.bindings[0].security_revision > 0
    assert _members(a.bindings[0]) == {_ip(a)}
    await _take_all(net)  # a's own arrival

    b = await _bind(net, network_id, "h2")
    assert b.bindings[0].security_revision > a.bindings[0].security_revision
    hosts = await _take_all(net)
    a_now = hosts["h1"][a.ports[0].id]
    assert _members(a_now) == {_ip(a), _ip(b)}
    assert a_now.security_revision > b.bindings[0].security_revision
    assert _members(hosts["h2"][b.ports[0].id]) == {_ip(a), _ip(b)}
    # Nothing changed since: nothing is waiting.
    assert (await _take(net)).change_ids == []

    # b's server goes: a's host hears that b's address is no member any more.
    await net.stub.DeleteDevicePorts(
        pb.DeleteDevicePortsRequest(scope=net.scope(), device_id=b.ports[0].device_id)
    )
    hosts = await _take_all(net)
    assert set(hosts) == {"h1"}
    assert _members(hosts["h1"][a.ports[0].id]) == {_ip(a)}


async def test_a_rule_added_or_removed_reaches_every_bound_member_and_no_unbound_port(
    net: Net,
) -> None:
    network_id, _ = await net.network_with_subnet("10.41.0.0/24")
    a = await _bind(net, network_id, "h1")
    loose = await net.stub.CreatePort(
        pb.CreatePortRequest(scope=net.scope(), port=pb.Port(network_id=network_id))
    )
    await _take_all(net)
    groups = await net.stub.ListSecurityGroups(pb.ListSecurityGroupsRequest(scope=net.scope()))
    default = next(g for g in groups.security_groups if g.name == "default")
    rule = await net.stub.CreateSecurityGroupRule(
        pb.CreateSecurityGroupRuleRequest(
            scope=net.scope(),
            rule=pb.SecurityGroupRule(
                security_group_id=default.id,
                direction="ingress",
                ethertype="IPv4",
                protocol="icmp",
                remote_ip_prefix="0.0.0.0/0",
            ),
        )
    )
    hosts = await _take_all(net)
    assert set(hosts) == {"h1"}, "the unbound port has no host to tell"
    assert loose.port.id not in hosts["h1"]
    assert [r.rule_id for r in hosts["h1"][a.ports[0].id].security_group_rules].count(
        rule.rule.id
    ) == 1

    await net.stub.DeleteSecurityGroupRule(
        pb.DeleteSecurityGroupRuleRequest(scope=net.scope(), id=rule.rule.id)
    )
    hosts = await _take_all(net)
    assert rule.rule.id not in {r.rule_id for r in hosts["h1"][a.ports[0].id].security_group_rules}


async def test_changes_taken_and_not_acknowledged_are_taken_again_after_their_lease(
    net: Net,
) -> None:
    network_id, _ = await net.network_with_subnet("10.42.0.0/24")
    a = await _bind(net, network_id, "h1")
    first = await _take(net, lease_s=0.5)
    assert first.change_ids
    # Claimed: another taker gets none of them.
    assert (await _take(net)).change_ids == []
    await asyncio.sleep(0.8)
    again = await _take(net)
    assert list(again.change_ids) == list(first.change_ids)
    assert again.hosts[0].ports[0].port_id == a.ports[0].id
    assert again.hosts[0].ports[0].security_revision > first.hosts[0].ports[0].security_revision


async def test_a_ports_allowed_address_pairs_reach_its_host_with_their_macs_when_they_change(
    net: Net,
) -> None:
    network_id, _ = await net.network_with_subnet("10.44.0.0/24")
    a = await _bind(net, network_id, "h1")
    assert list(a.bindings[0].allowed_address_pairs) == []
    await _take_all(net)
    await net.stub.UpdatePort(
        pb.UpdatePortRequest(
            scope=net.scope(),
            id=a.ports[0].id,
            allowed_address_pairs=pb.AddressPairList(
                pairs=[
                    pb.AddressPair(ip_address="10.44.0.250"),
                    pb.AddressPair(ip_address="10.44.0.251", mac_address="fa:16:3e:12:34:56"),
                ]
            ),
        )
    )
    hosts = await _take_all(net)
    sent = hosts["h1"][a.ports[0].id]
    own = a.ports[0].mac_address
    assert [(p.ip_address, p.mac_address) for p in sent.address_pairs] == [
        ("10.44.0.250", own),
        ("10.44.0.251", "fa:16:3e:12:34:56"),
    ]
    # A host that reads only the older list is sent the pairs with the port's own MAC.
    assert list(sent.allowed_address_pairs) == ["10.44.0.250"]
