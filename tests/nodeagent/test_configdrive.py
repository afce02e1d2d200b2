"""The config drive reads back as the OpenStack layout, labelled config-2."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
from pathlib import Path

import pycdlib
import pytest
from loom.compute.v1 import agent_bus_pb2 as pb

from nodeagent.configdrive import (
    ConfigDriveError,
    build_iso,
    drive_files,
    metadata_tree,
    wants_config_drive,
    write_config_drive,
)
from tests.nodeagent.support import make_spec

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBKx2Gh6bVXq0yFhR0u0p6dq0qW1Ff0x9xUg3bI9d3Qm loom@test"
PORT = pb.PortBinding(
    port_id="0b7e6a57-8f0e-4c7b-9d51-9a0f2f6a1c01",
    network_id="5f3e0b1c-2d4a-4e8b-8c6d-7e9f0a1b2c3d",
    segmentation_id=1001,
    mac_address="fa:16:3e:00:00:01",
    mtu=1450,
    fixed_ips=[
        pb.FixedIp(
            subnet_id="s" * 12,
            ip_address="10.0.0.5",
            prefixlen=24,
            gateway_ip="10.0.0.1",
            dns_nameservers=["10.0.0.2"],
        )
    ],
)


def _spec(**over: object) -> pb.InstanceSpec:
    fields: dict[str, object] = {
        "instance_id": "6f1c2a9e-0b4d-4c3a-9a57-1d2e3f405162",
        "display_name": "web-1",
        "hostname": "web-1",
        "project_id": "p-1",
        "key_name": "mykey",
        "key_data": KEY,
        "user_data": base64.b64encode(b"#!/bin/sh\necho LOOM-USERDATA-OK\n").decode(),
        "metadata": {"role": "web"},
        "availability_zone": "az-1",
        "ports": [PORT],
    }
    fields.update(over)
    return make_spec(**fields)


def _read(iso: pycdlib.PyCdlib, path: str) -> bytes:
    out = io.BytesIO()
    iso.get_file_from_iso_fp(out, rr_path=path)
    return out.getvalue()


def test_the_drive_reads_back_with_its_label_metadata_user_data_and_network_data(
    tmp_path: Path,
) -> None:
    path = write_config_drive(_spec(), tmp_path / "disk.config")
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        assert iso.pvd.volume_identifier.decode().strip() == "config-2"
        meta = json.loads(_read(iso, "/openstack/latest/meta_data.json"))
        assert meta["uuid"] == "6f1c2a9e-0b4d-4c3a-9a57-1d2e3f405162"
        assert meta["hostname"] == "web-1"
        assert meta["public_keys"] == {"mykey": KEY}
        assert meta["keys"] == [{"name": "mykey", "type": "ssh", "data": KEY}]
        assert meta["meta"] == {"role": "web"}
        assert (meta["project_id"], meta["availability_zone"], meta["launch_index"]) == (
            "p-1",
            "az-1",
            0,
        )
        assert _read(iso, "/openstack/latest/user_data") == b"#!/bin/sh\necho LOOM-USERDATA-OK\n"
        net = json.loads(_read(iso, "/openstack/latest/network_data.json"))
        assert net["links"] == [
            {
                "id": "tap0b7e6a57-8f",
                "vif_id": PORT.port_id,
                "type": "bridge",
                "ethernet_mac_address": "fa:16:3e:00:00:01",
                "mtu": 1450,
            }
        ]
        assert net["networks"][0] | {"routes": None} == {
            "id": "network0",
            "type": "ipv4",
            "link": "tap0b7e6a57-8f",
            "ip_address": "10.0.0.5",
            "netmask": "255.255.255.0",
            "routes": None,
            "network_id": PORT.network_id,
            "services": [{"type": "dns", "address": "10.0.0.2"}],
        }
        assert net["networks"][0]["routes"] == [
            {"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "10.0.0.1"}
        ]
        assert net["services"] == [{"type": "dns", "address": "10.0.0.2"}]
        # Joliet names (what Windows guests read) give the same bytes.
        joliet = io.BytesIO()
        iso.get_file_from_iso_fp(joliet, joliet_path="/openstack/latest/meta_data.json")
        assert json.loads(joliet.getvalue()) == meta
        # The dated versions hold the same metadata.
        assert _read(iso, "/openstack/2012-08-10/meta_data.json") == _read(
            iso, "/openstack/latest/meta_data.json"
        )
    finally:
        iso.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a loop device needs root")
def test_the_linux_kernel_mounts_the_drive_by_its_rock_ridge_names(tmp_path: Path) -> None:
    path = write_config_drive(_spec(), tmp_path / "disk.config")
    label = subprocess.run(
        ["blkid", "-o", "value", "-s", "LABEL", str(path)], capture_output=True, text=True
    ).stdout.strip()
    assert label == "config-2"
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mounted = subprocess.run(
        ["mount", "-o", "loop,ro", "-t", "iso9660", str(path), str(mnt)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"loop mount unavailable: {mounted.stderr.strip()}")
    try:
        names = sorted(p.name for p in (mnt / "openstack").iterdir())
        assert names == ["2012-08-10", "2015-10-15", "latest"]
        assert (mnt / "openstack/latest/user_data").read_bytes().endswith(b"LOOM-USERDATA-OK\n")
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_a_drive_is_wanted_only_when_the_guest_has_something_to_read_or_asked() -> None:
    assert not wants_config_drive(make_spec())
    assert wants_config_drive(make_spec(config_drive=True))
    assert wants_config_drive(make_spec(key_data=KEY))
    assert wants_config_drive(make_spec(user_data="aGk="))
    assert wants_config_drive(make_spec(ports=[PORT]))


def test_user_data_that_is_not_base64_is_refused_with_a_sentence() -> None:
    with pytest.raises(ConfigDriveError, match="not valid base64"):
        build_iso(_spec(user_data="not*base64"))


def test_the_metadata_service_answers_the_config_drives_files_and_the_ec2_layout() -> None:
    spec = _spec(instance_name="instance-0000002a", launch_index=2)
    tree = metadata_tree(spec)
    # Every file of the drive, byte for byte: one source for both.
    for f in drive_files(spec):
        assert tree[f.path] == f.data
    assert tree["openstack"] == b"2012-08-10\n2015-10-15\nlatest"
    assert tree["openstack/latest"] == b"meta_data.json\nnetwork_data.json\nuser_data"
    assert tree[""] == b"2009-04-04\nlatest"
    assert tree["latest"] == b"meta-data/\nuser-data"
    assert tree["latest/meta-data"].split(b"\n") == [
        b"ami-launch-index",
        b"hostname",
        b"instance-id",
        b"local-hostname",
        b"local-ipv4",
        b"placement/",
        b"public-keys/",
    ]
    assert tree["latest/meta-data/instance-id"] == b"i-0000002a"
    assert tree["latest/meta-data/ami-launch-index"] == b"2"
    assert tree["latest/meta-data/local-ipv4"] == b"10.0.0.5"
    assert tree["latest/meta-data/placement/availability-zone"] == b"az-1"
    assert tree["latest/meta-data/public-keys"] == b"0=mykey"
    assert tree["latest/meta-data/public-keys/0"] == b"openssh-key"
    assert tree["latest/meta-data/public-keys/0/openssh-key"] == KEY.encode()
    assert tree["2009-04-04/user-data"] == b"#!/bin/sh\necho LOOM-USERDATA-OK\n"

    bare = metadata_tree(_spec(key_data="", user_data="", ports=[], instance_name="web-odd"))
    assert "latest/user-data" not in bare
    assert "openstack/latest/user_data" not in bare
    assert bare["latest/meta-data"].split(b"\n") == [
        b"ami-launch-index",
        b"hostname",
        b"instance-id",
        b"local-hostname",
        b"placement/",
    ]
    assert bare["latest/meta-data/instance-id"] == b"6f1c2a9e-0b4d-4c3a-9a57-1d2e3f405162"
    with pytest.raises(ConfigDriveError):
        metadata_tree(_spec(user_data="not base64!"))
