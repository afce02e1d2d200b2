"""Snapshots on the host: a root disk (a qcow2 overlay on its image) copied whole into one
qcow2 file with qemu-img, around a pause of the running guest on libvirt's test driver."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from loom.compute.v1 import agent_bus_pb2

from nodeagent.driver.base import PowerState
from nodeagent.driver.libvirt_driver import LibvirtDriver
from nodeagent.images.disks import create_overlay
from nodeagent.images.source import LocalImageSource
from nodeagent.images.upload import ImageUploadFailed
from nodeagent.snapshots import RotationFailed, SnapshotFailed, SnapshotTaker
from tests.nodeagent.support import make_spec, make_test_driver

MARKER = b"loom-base-image-marker"


class _DiskHost(LibvirtDriver):
    """A test:/// host whose instance has a real root disk file: the overlay given."""

    disk: Path

    def root_disk(self, instance_id: str) -> Path | None:
        super().root_disk(instance_id)  # InstanceNotFound for an absent instance
        return self.disk


class _KeptUpload:
    """The image service's side of an upload, as bytes kept per image."""

    def __init__(self) -> None:
        self.images: dict[str, bytes] = {}
        self.deleted: list[str] = []

    def upload(self, image_id: str, path: Path) -> int:
        if self.images.get(image_id):
            # As the image service does: an image's data is set once.
            raise ImageUploadFailed(f"The image service answered 409 to the upload of {image_id}.")
        self.images[image_id] = path.read_bytes()
        return len(self.images[image_id])

    def status(self, image_id: str) -> str | None:
        if image_id not in self.images:
            return None
        return "active" if self.images[image_id] else "queued"

    def queue(self, *image_ids: str) -> _KeptUpload:
        """Registers images without data, as the gateway does before a snapshot."""
        for image_id in image_ids:
            self.images[image_id] = b""
        return self

    def delete(self, image_id: str) -> None:
        self.images.pop(image_id, None)
        self.deleted.append(image_id)

    def backups(self, instance_id: str, backup_type: str) -> list[str]:
        """Ids named `<instance>-<type>-<n>`, highest n (newest) first."""
        prefix = f"{instance_id}-{backup_type}-"
        return sorted((i for i in self.images if i.startswith(prefix)), reverse=True)


class _StuckDelete(_KeptUpload):
    """An image service that refuses to delete one image."""

    def __init__(self, stuck: str) -> None:
        super().__init__()
        self.stuck = stuck

    def delete(self, image_id: str) -> None:
        if image_id == self.stuck:
            raise ImageUploadFailed(f"The image service answered 409 to deleting {image_id}.")
        super().delete(image_id)


def _raw_of(qcow2: bytes, tmp: Path) -> bytes:
    src, dst = tmp / "in.qcow2", tmp / "out.raw"
    src.write_bytes(qcow2)
    subprocess.run(
        ["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(src), str(dst)], check=True
    )
    return dst.read_bytes()


@pytest.fixture
def driver(tmp_path: Path) -> LibvirtDriver:
    d = make_test_driver(tmp_path, "h1")
    d.open()
    return d


def test_a_running_guest_s_overlay_is_copied_with_its_image_folded_in_and_left_running(
    tmp_path: Path,
) -> None:
    base = tmp_path / "base.raw"
    base.write_bytes(MARKER + b"\0" * (1024 * 1024 - len(MARKER)))
    overlay = tmp_path / "disk"
    create_overlay(base, "raw", overlay, 2 * 1024 * 1024)
    plain = make_test_driver(tmp_path, "h1")
    host = _DiskHost(plain.uri, host="h1", instances_dir=tmp_path / "instances", disk_gb=100)
    host.disk = overlay
    host.open()
    spec = make_spec()
    assert host.create(spec) == PowerState.RUNNING
    kept = _KeptUpload().queue("snap-1")
    taker = SnapshotTaker(LocalImageSource(tmp_path / "images"), kept, tmp_path / "scratch")

    state = taker.take(host, spec.instance_id, spec.image, "snap-1")

    assert state == PowerState.RUNNING
    assert host.describe(spec.instance_id) == PowerState.RUNNING
    raw = _raw_of(kept.images["snap-1"], tmp_path)
    assert raw.startswith(MARKER)
    assert len(raw) == 2 * 1024 * 1024  # the overlay's size, not the base's
    assert list((tmp_path / "scratch").iterdir()) == []  # the copy is not left behind


def _raw_image_guest(
    driver: LibvirtDriver, tmp_path: Path
) -> tuple[Path, agent_bus_pb2.InstanceSpec]:
    """A running simulated guest of a raw image holding MARKER; the images' folder too."""
    images = tmp_path / "images"
    images.mkdir()
    (images / "img-raw").write_bytes(MARKER + b"\0" * 4096)
    spec = make_spec(image=agent_bus_pb2.ImageRef(id="img-raw", disk_format="raw"))
    driver.create(spec)
    return images, spec


def test_a_simulated_guest_s_snapshot_holds_its_image_s_bytes(
    driver: LibvirtDriver, tmp_path: Path
) -> None:
    images, spec = _raw_image_guest(driver, tmp_path)
    driver.stop(spec.instance_id, 0)
    kept = _KeptUpload().queue("snap-2")
    taker = SnapshotTaker(LocalImageSource(images), kept, tmp_path / "scratch")

    assert taker.take(driver, spec.instance_id, spec.image, "snap-2") == PowerState.SHUTDOWN
    assert _raw_of(kept.images["snap-2"], tmp_path).startswith(MARKER)


def test_an_image_that_is_not_a_disk_cannot_be_a_snapshot(
    driver: LibvirtDriver, tmp_path: Path
) -> None:
    spec = make_spec(image=agent_bus_pb2.ImageRef(id="kernel", disk_format="aki"))
    driver.create(spec)
    kept = _KeptUpload().queue("snap-3")
    taker = SnapshotTaker(LocalImageSource(tmp_path), kept, tmp_path / "scratch")
    with pytest.raises(SnapshotFailed, match="aki"):
        taker.take(driver, spec.instance_id, spec.image, "snap-3")
    assert kept.deleted == ["snap-3"]  # the failed snapshot's image does not linger


def test_a_backup_rotation_keeps_the_newest_of_its_type_and_names_what_it_could_not_delete(
    tmp_path: Path,
) -> None:
    kept = _StuckDelete(stuck="i1-daily-2")
    for name in ("i1-daily-1", "i1-daily-2", "i1-daily-3", "i1-daily-4", "i1-weekly-1"):
        kept.images[name] = b"x"
    taker = SnapshotTaker(LocalImageSource(tmp_path), kept, tmp_path / "scratch")
    rotation = agent_bus_pb2.BackupRotation(backup_type="daily", rotation=2)

    with pytest.raises(RotationFailed, match="i1-daily-2"):
        taker.rotate("i1", rotation)
    # The other excess backup went all the same; the newest two and the other type stay.
    assert kept.deleted == ["i1-daily-1"]
    assert sorted(kept.images) == ["i1-daily-2", "i1-daily-3", "i1-daily-4", "i1-weekly-1"]

    kept.stuck = ""
    assert taker.rotate("i1", agent_bus_pb2.BackupRotation(backup_type="daily")) == [
        "i1-daily-4",
        "i1-daily-3",
        "i1-daily-2",
    ]
    assert sorted(kept.images) == ["i1-weekly-1"]  # rotation 0 keeps none of its type


def test_a_redelivered_snapshot_leaves_the_uploaded_image_alone_and_takes_nothing_again(
    driver: LibvirtDriver, tmp_path: Path
) -> None:
    images, spec = _raw_image_guest(driver, tmp_path)
    kept = _KeptUpload().queue("snap-4")
    taker = SnapshotTaker(LocalImageSource(images), kept, tmp_path / "scratch")
    assert taker.take(driver, spec.instance_id, spec.image, "snap-4") == PowerState.RUNNING
    uploaded = kept.images["snap-4"]

    # The same command again (its ack was lost): the image stays, with its bytes.
    assert taker.take(driver, spec.instance_id, spec.image, "snap-4") == PowerState.RUNNING
    assert kept.images["snap-4"] == uploaded
    assert kept.deleted == []

    # An image that is gone, or not queued, is not taken and not deleted.
    with pytest.raises(SnapshotFailed, match="gone"):
        taker.take(driver, spec.instance_id, spec.image, "snap-5")
    assert kept.deleted == []
