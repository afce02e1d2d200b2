"""Snapshots: an instance's root disk copied into one qcow2 file and uploaded as a queued
image's data.

A real guest's disk is its qcow2 overlay: a running guest is paused while the copy is
read (so no write lands half way) and let run again after, whatever happened. A simulated
guest (test:///) has no disk of its own; its disk is the image it was built from, so its
snapshot holds that image's bytes (converted to qcow2 like any other). Synchronous: the
agent runs it in a worker thread."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from loom.compute.v1 import agent_bus_pb2

from nodeagent.driver.base import Driver, PauseSuspendDriver, PowerState, SnapshotDriver
from nodeagent.images.disks import DISK_FORMATS, export_qcow2
from nodeagent.images.source import ImageError, ImageSource
from nodeagent.images.upload import ImageUploader

log = logging.getLogger(__name__)


class SnapshotFailed(Exception):
    """The snapshot could not be taken or uploaded; `str()` is one sentence for the user."""


class RotationFailed(Exception):
    """The backup was uploaded but older backups could not all be deleted; `str()` says
    so in one sentence for the user."""


@dataclass(frozen=True)
class SnapshotTaker:
    """What a host needs to take snapshots: where simulated guests' images come from,
    where the bytes go, and a scratch folder for the copy."""

    source: ImageSource
    uploader: ImageUploader
    scratch: Path

    def take(
        self,
        driver: Driver,
        instance_id: str,
        base: agent_bus_pb2.ImageRef,
        image_id: str,
    ) -> PowerState:
        """Copies the instance's root disk and uploads it as `image_id`'s data; returns
        the guest's power state after (as before). InstanceNotFound if the instance is
        not here; SnapshotFailed for anything else. A snapshot that fails deletes its
        image (a queued image without data is of use to no one).

        Only a queued image is taken: a redelivered command whose image is active already
        changes nothing (the snapshot was uploaded), and one whose image is in any other
        state fails without touching it (an upload may be under way, or the image gone)."""
        status = self._status(image_id)
        if status == "active":
            log.info(
                "snapshot already uploaded; nothing to do",
                extra={"instance": instance_id, "image": image_id},
            )
            return driver.describe(instance_id)
        if status != "queued":
            raise SnapshotFailed(
                f"Image {image_id} is {status or 'gone'}; the snapshot was not taken again."
            )
        try:
            return self._take(driver, instance_id, base, image_id)
        except BaseException:
            self.drop(image_id)
            raise

    def _status(self, image_id: str) -> str | None:
        try:
            return self.uploader.status(image_id)
        except ImageError as exc:
            raise SnapshotFailed(str(exc)) from exc

    def drop(self, image_id: str) -> None:
        """Deletes the image, logging (not raising) when the image service refuses."""
        try:
            self.uploader.delete(image_id)
        except ImageError as exc:
            log.warning("image not deleted", extra={"image": image_id, "error": str(exc)})

    def rotate(self, instance_id: str, rotation: agent_bus_pb2.BackupRotation) -> list[str]:
        """Deletes the instance's backups of `rotation.backup_type` beyond the newest
        `rotation.rotation` (a rotation of 0 deletes them all); returns the ids deleted.
        RotationFailed when the list or a deletion failed (the others are still tried)."""
        try:
            backups = self.uploader.backups(instance_id, rotation.backup_type)
        except ImageError as exc:
            raise RotationFailed(
                f"The backup was uploaded, but older backups were not deleted: {exc}"
            ) from exc
        excess = backups[max(rotation.rotation, 0) :]
        failed: list[str] = []
        for image_id in excess:
            try:
                self.uploader.delete(image_id)
            except ImageError as exc:
                log.warning("backup not rotated", extra={"image": image_id, "error": str(exc)})
                failed.append(image_id)
        if failed:
            raise RotationFailed(
                "The backup was uploaded, but older backups could not be deleted: "
                + ", ".join(failed)
            )
        log.info(
            "backups rotated",
            extra={"instance": instance_id, "kept": len(backups) - len(excess), "deleted": excess},
        )
        return excess

    def _take(
        self,
        driver: Driver,
        instance_id: str,
        base: agent_bus_pb2.ImageRef,
        image_id: str,
    ) -> PowerState:
        if not isinstance(driver, SnapshotDriver):
            raise SnapshotFailed("This host's hypervisor cannot take snapshots.")
        self.scratch.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f"{instance_id}-", dir=self.scratch) as tmp:
            copy = Path(tmp) / "snapshot.qcow2"
            disk = driver.root_disk(instance_id)
            try:
                if disk is None:
                    self._copy_image(base, Path(tmp) / "base", copy)
                else:
                    _copy_disk(driver, instance_id, disk, copy)
                size = self.uploader.upload(image_id, copy)
            except ImageError as exc:
                raise SnapshotFailed(str(exc)) from exc
            log.info(
                "snapshot uploaded",
                extra={"instance": instance_id, "image": image_id, "bytes": size},
            )
        return driver.describe(instance_id)

    def _copy_image(self, base: agent_bus_pb2.ImageRef, raw: Path, copy: Path) -> None:
        fmt = DISK_FORMATS.get(base.disk_format)
        if fmt is None:
            raise SnapshotFailed(
                f"An instance of an image in {base.disk_format or 'no'} format has no disk to"
                " snapshot."
            )
        with raw.open("wb") as out:
            self.source.fetch(base.id, out)
        export_qcow2(raw, fmt, copy)


def _copy_disk(driver: Driver, instance_id: str, disk: Path, copy: Path) -> None:
    pauser = driver if isinstance(driver, PauseSuspendDriver) else None
    running = pauser is not None and driver.describe(instance_id) == PowerState.RUNNING
    if pauser is not None and running:
        pauser.pause(instance_id)
    try:
        export_qcow2(disk, "qcow2", copy)
    finally:
        if pauser is not None and running:
            pauser.unpause(instance_id)
