"""The test guest image: a Debian kernel and a busybox initramfs whose init prints a marker."""

from __future__ import annotations

import gzip
import subprocess
from pathlib import Path

import pytest

from controlplane.testimage import MARKER, _cpio_newc, build_test_image, recipe


def test_the_initramfs_archive_lists_init_and_busybox_to_cpio(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "busybox").write_bytes(b"\x7fELF" + b"x" * 13)
    (root / "init").write_text("#!/bin/busybox sh\n")
    archive = tmp_path / "a.cpio"
    archive.write_bytes(_cpio_newc(root))
    listing = subprocess.run(
        ["cpio", "-t", "--quiet"], input=archive.read_bytes(), capture_output=True, check=True
    ).stdout.decode()
    assert sorted(listing.split()) == ["bin", "bin/busybox", "init"]


@pytest.fixture(scope="session")
def built_image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    img = build_test_image(tmp_path_factory.mktemp("img"))
    return img.kernel, img.initrd


def test_the_built_image_has_a_bootable_kernel_and_an_init_printing_the_marker(
    built_image: tuple[Path, Path], tmp_path: Path
) -> None:
    kernel, initrd = built_image
    assert (
        "Linux kernel x86 boot executable"
        in subprocess.run(["file", str(kernel)], capture_output=True, text=True, check=True).stdout
    )
    subprocess.run(
        ["cpio", "-id", "--quiet"],
        cwd=tmp_path,
        input=gzip.decompress(initrd.read_bytes()),
        check=True,
    )
    assert MARKER in (tmp_path / "init").read_text()
    order = (tmp_path / "lib/modules/load-order").read_text().split()
    # Each module after what it needs: the NIC, the IDE cdrom and ISO 9660 for the
    # config drive.
    for before, after in (("virtio", "virtio_net"), ("scsi_mod", "sr_mod"), ("cdrom", "sr_mod")):
        assert order.index(before) < order.index(after)
    assert {"virtio_net", "ata_piix", "sr_mod", "isofs"} <= set(order)
    assert all((tmp_path / "lib/modules" / f"{name}.ko").exists() for name in order)
    assert (tmp_path / "bin/udhcpc.script").stat().st_mode & 0o111


def test_building_again_reuses_the_files_already_there(built_image: tuple[Path, Path]) -> None:
    kernel, _ = built_image
    before = kernel.stat().st_mtime_ns
    build_test_image(kernel.parent)
    assert kernel.stat().st_mtime_ns == before


def test_a_build_made_from_another_recipe_is_made_again(built_image: tuple[Path, Path]) -> None:
    _, initrd = built_image
    (initrd.parent / "recipe").write_text("an older init\n")
    before = initrd.stat().st_mtime_ns
    build_test_image(initrd.parent)
    assert initrd.stat().st_mtime_ns != before
    assert (initrd.parent / "recipe").read_text().strip() == recipe()
