"""The image cache, its sources and qcow2 overlays, on real files, HTTP and qemu-img."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nodeagent.images.cache import ImageCache, ImageVerificationFailed, ImageWanted
from nodeagent.images.disks import GIB, DiskError, create_overlay
from nodeagent.images.source import (
    HttpImageSource,
    ImageError,
    ImageFetchFailed,
    ImageNotFound,
    LocalImageSource,
    file_token,
)
from tests.nodeagent.conftest import AgentFactory
from tests.nodeagent.imageserver import image_server
from tests.nodeagent.support import make_test_driver
from tests.support import polling

PAYLOAD = os.urandom(256 * 1024)
PAYLOAD_SHA512 = hashlib.sha512(PAYLOAD).hexdigest()


def _qemu_img_info(path: Path) -> dict[str, Any]:
    out = subprocess.run(
        ["qemu-img", "info", "--output=json", str(path)], capture_output=True, check=True
    ).stdout
    info: dict[str, Any] = json.loads(out)
    return info


def _qemu_img_create(path: Path, fmt: str, size: str, *extra: str) -> None:
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", fmt, *extra, str(path), size],
        capture_output=True,
        check=True,
    )


def _leftovers(cache: ImageCache) -> list[str]:
    tmp = cache.root / ".tmp"
    return sorted(p.name for p in tmp.iterdir()) if tmp.is_dir() else []


def _run_concurrently(*fns: Callable[[], Path]) -> list[Path]:
    results: list[Path] = []
    errors: list[BaseException] = []
    gate = threading.Barrier(len(fns))

    def run(fn: Callable[[], Path]) -> None:
        gate.wait()
        try:
            results.append(fn())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(fn,)) for fn in fns]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    return results


def test_two_concurrent_builds_of_one_image_download_it_once(tmp_path: Path) -> None:
    with image_server({"img-a": PAYLOAD}, delay_s=0.5) as server:
        cache = ImageCache(tmp_path / "cache", HttpImageSource(server.url, lambda: "tok"))
        want = ImageWanted("img-a", "raw", PAYLOAD_SHA512)
        paths = _run_concurrently(lambda: cache.ensure(want), lambda: cache.ensure(want))
    assert server.requests == ["/v2/images/img-a/file"]
    assert paths == [cache.path_of("img-a")] * 2
    assert paths[0].read_bytes() == PAYLOAD


def test_two_caches_on_one_folder_as_two_processes_would_download_once(tmp_path: Path) -> None:
    # Separate ImageCache objects share no thread locks: only the flock keeps them apart,
    # exactly as it must between two agent processes.
    with image_server({"img-a": PAYLOAD}, delay_s=0.5) as server:
        first = ImageCache(tmp_path / "cache", HttpImageSource(server.url, lambda: ""))
        second = ImageCache(tmp_path / "cache", HttpImageSource(server.url, lambda: ""))
        want = ImageWanted("img-a", "raw", PAYLOAD_SHA512)
        _run_concurrently(lambda: first.ensure(want), lambda: second.ensure(want))
    assert len(server.requests) == 1
    assert first.downloads + second.downloads == 1


def test_the_http_source_sends_the_current_token_and_maps_404_to_not_found(
    tmp_path: Path,
) -> None:
    token_path = tmp_path / "token"
    token_path.write_text("secret-1\n")
    with image_server({"img-a": b"abc"}) as server:
        source = HttpImageSource(server.url, file_token(token_path))
        cache = ImageCache(tmp_path / "cache", source)
        cache.ensure(ImageWanted("img-a", "raw"))
        token_path.write_text("secret-2")
        with pytest.raises(ImageNotFound, match="not in the image service"):
            cache.ensure(ImageWanted("img-missing", "raw"))
    assert server.tokens == ["secret-1", "secret-2"]
    assert cache.cached() == {"img-a"}


def test_a_download_cut_off_midway_fails_and_leaves_no_partial_file(tmp_path: Path) -> None:
    with image_server({"img-a": PAYLOAD}, truncate=True) as server:
        cache = ImageCache(tmp_path / "cache", HttpImageSource(server.url, lambda: ""))
        with pytest.raises(ImageFetchFailed, match="could not be downloaded"):
            cache.ensure(ImageWanted("img-a", "raw", PAYLOAD_SHA512))
    assert cache.cached() == set()
    assert _leftovers(cache) == []


def test_a_hash_mismatch_fails_cleanly_and_leaves_no_partial_file(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    (store / "img-a").write_bytes(PAYLOAD)
    cache = ImageCache(tmp_path / "cache", LocalImageSource(store))
    wrong = hashlib.sha512(b"something else").hexdigest()
    with pytest.raises(ImageVerificationFailed, match="failed verification"):
        cache.ensure(ImageWanted("img-a", "raw", wrong))
    assert cache.cached() == set()
    assert _leftovers(cache) == []
    # The right hash afterwards succeeds: nothing poisoned the cache.
    assert cache.ensure(ImageWanted("img-a", "raw", PAYLOAD_SHA512)).read_bytes() == PAYLOAD


def test_an_image_id_that_could_leave_the_store_is_refused(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "cache", LocalImageSource(tmp_path))
    with pytest.raises(ImageError, match="not a valid image id"):
        cache.ensure(ImageWanted("../etc", "raw"))


def test_a_qcow2_image_with_a_backing_file_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    _qemu_img_create(tmp_path / "host-file", "raw", "1M")
    _qemu_img_create(store / "evil", "qcow2", "1M", "-F", "raw", "-b", str(tmp_path / "host-file"))
    cache = ImageCache(tmp_path / "cache", LocalImageSource(store))
    with pytest.raises(ImageVerificationFailed, match="backing file"):
        cache.ensure(ImageWanted("evil", "qcow2"))
    assert cache.cached() == set()
    assert _leftovers(cache) == []


@pytest.mark.parametrize("base_format", ["raw", "qcow2"])
def test_an_overlay_is_qcow2_on_its_base_and_sized_to_the_flavor(
    tmp_path: Path, base_format: str
) -> None:
    base = tmp_path / f"base.{base_format}"
    _qemu_img_create(base, base_format, "16M")
    overlay = tmp_path / "disk"
    create_overlay(base, base_format, overlay, 1 * GIB)
    info = _qemu_img_info(overlay)
    assert info["format"] == "qcow2"
    assert info["backing-filename"] == str(base)
    assert info["backing-filename-format"] == base_format
    assert info["virtual-size"] == GIB


def test_an_overlay_without_a_flavor_size_keeps_the_image_size(tmp_path: Path) -> None:
    base = tmp_path / "base"
    _qemu_img_create(base, "qcow2", "16M")
    create_overlay(base, "qcow2", tmp_path / "disk", 0)
    assert _qemu_img_info(tmp_path / "disk")["virtual-size"] == 16 * 1024**2


def test_a_flavor_disk_smaller_than_the_image_is_refused(tmp_path: Path) -> None:
    base = tmp_path / "base"
    _qemu_img_create(base, "qcow2", "2G")
    with pytest.raises(DiskError, match="smaller than the image"):
        create_overlay(base, "qcow2", tmp_path / "disk", 1 * GIB)
    assert not (tmp_path / "disk").exists()


def _aged(path: Path, seconds: float) -> None:
    past = time.time() - seconds
    os.utime(path, (past, past))


def test_unused_images_age_out_and_images_in_use_stay(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    for name in ("used", "unused", "fresh"):
        (store / name).write_bytes(name.encode())
    cache = ImageCache(tmp_path / "cache", LocalImageSource(store))
    for name in ("used", "unused", "fresh"):
        cache.ensure(ImageWanted(name, "raw"))
    _aged(cache.path_of("used"), 3600)
    _aged(cache.path_of("unused"), 3600)
    assert cache.prune(60, lambda: {"used"}) == ["unused"]
    assert cache.cached() == {"used", "fresh"}
    # Being in use counts as a use: once released, "used" gets the full age again.
    assert cache.prune(60, set) == []
    assert cache.cached() == {"used", "fresh"}


def test_an_interrupted_download_is_swept_by_the_next_prune(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "cache", LocalImageSource(tmp_path))
    (cache.root / ".tmp").mkdir(parents=True)
    (cache.root / ".tmp" / "img-a.4242.0").write_bytes(b"half")
    cache.prune(3600, set)
    assert _leftovers(cache) == []


async def test_the_agent_prunes_the_image_cache_periodically(
    tmp_path: Path, make_agent: AgentFactory
) -> None:
    store = tmp_path / "store"
    store.mkdir()
    (store / "old").write_bytes(b"old")
    driver = make_test_driver(tmp_path, "h1")
    driver.images = ImageCache(tmp_path / "cache", LocalImageSource(store))
    driver.images.ensure(ImageWanted("old", "raw"))
    _aged(driver.images.path_of("old"), 10)
    agent = make_agent(
        "h1", driver=driver, image_cache_max_age_s=5, image_cache_prune_interval_s=0.2
    )
    await agent.start()

    async def pruned() -> bool:
        return not driver.images.cached()

    # Within one prune interval (0.2 s here), bounded as any other agent step.
    await polling.eventually(pruned, polling.AGENT_COMMAND_S, "the aged image pruned")
    assert driver.images.cached() == set()
