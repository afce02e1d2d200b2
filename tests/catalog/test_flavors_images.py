"""FlavorsService and ImagesService against PostgreSQL."""

from __future__ import annotations

import grpc
import pytest
from loom.catalog.v1 import flavors_pb2
from loom.image.v1 import images_pb2

from tests.catalog.conftest import Stubs


async def test_the_default_flavors_are_nova_s(stubs: Stubs) -> None:
    reply = await stubs.flavors.ListFlavors(flavors_pb2.ListFlavorsRequest())
    sizes = [(f.id, f.name, f.vcpus, f.memory_mb, f.root_gb) for f in reply.flavors]
    assert sizes == [
        ("1", "m1.tiny", 1, 512, 1),
        ("2", "m1.small", 1, 2048, 20),
        ("3", "m1.medium", 2, 4096, 40),
        ("4", "m1.large", 4, 8192, 80),
        ("5", "m1.xlarge", 8, 16384, 160),
    ]


async def test_flavor_pages_resume_after_the_marker(stubs: Stubs) -> None:
    first = await stubs.flavors.ListFlavors(flavors_pb2.ListFlavorsRequest(limit=2))
    assert [f.id for f in first.flavors] == ["1", "2"]
    assert first.next_marker == "2"
    rest = await stubs.flavors.ListFlavors(flavors_pb2.ListFlavorsRequest(marker="2", limit=10))
    assert [f.id for f in rest.flavors] == ["3", "4", "5"]
    assert rest.next_marker == ""


@pytest.mark.parametrize(
    ("flavor", "code"),
    [
        (
            flavors_pb2.Flavor(id="1", name="dup-id", vcpus=1, memory_mb=1),
            grpc.StatusCode.ALREADY_EXISTS,
        ),
        (flavors_pb2.Flavor(name="m1.tiny", vcpus=1, memory_mb=1), grpc.StatusCode.ALREADY_EXISTS),
        (
            flavors_pb2.Flavor(name="zero-cpu", vcpus=0, memory_mb=1),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ],
    ids=["a duplicate id", "a duplicate name", "zero vcpus"],
)
async def test_bad_flavors_are_refused_with_a_clear_code(
    stubs: Stubs, flavor: flavors_pb2.Flavor, code: grpc.StatusCode
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.flavors.CreateFlavor(flavors_pb2.CreateFlavorRequest(flavor=flavor))
    assert err.value.code() == code


async def test_extra_specs_merge_and_delete(stubs: Stubs) -> None:
    await stubs.flavors.SetFlavorExtraSpecs(
        flavors_pb2.SetFlavorExtraSpecsRequest(id="1", extra_specs={"a": "1", "b": "2"})
    )
    merged = await stubs.flavors.SetFlavorExtraSpecs(
        flavors_pb2.SetFlavorExtraSpecsRequest(id="1", extra_specs={"b": "3"})
    )
    assert dict(merged.extra_specs) == {"a": "1", "b": "3"}
    await stubs.flavors.DeleteFlavorExtraSpec(
        flavors_pb2.DeleteFlavorExtraSpecRequest(id="1", key="a")
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.flavors.DeleteFlavorExtraSpec(
            flavors_pb2.DeleteFlavorExtraSpecRequest(id="1", key="a")
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_private_image_is_invisible_to_other_projects(stubs: Stubs) -> None:
    image = (
        await stubs.images.CreateImage(
            images_pb2.CreateImageRequest(
                image=images_pb2.Image(name="mine", owner="p-a", visibility="private")
            )
        )
    ).image
    assert image.status == "queued"
    await stubs.images.GetImage(images_pb2.GetImageRequest(id=image.id, project_id="p-a"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.images.GetImage(images_pb2.GetImageRequest(id=image.id, project_id="p-b"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    seen = await stubs.images.ListImages(images_pb2.ListImagesRequest(project_id="p-b"))
    assert list(seen.images) == []


async def test_recording_data_activates_an_image_once(stubs: Stubs) -> None:
    image = (
        await stubs.images.CreateImage(
            images_pb2.CreateImageRequest(image=images_pb2.Image(name="x", owner="p"))
        )
    ).image
    done = await stubs.images.RecordImageData(
        images_pb2.RecordImageDataRequest(id=image.id, size=3, checksum="c", location="file:///x")
    )
    assert (done.image.status, done.image.size) == ("active", 3)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.images.RecordImageData(
            images_pb2.RecordImageDataRequest(id=image.id, size=4, location="file:///y")
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_protected_image_cannot_be_deleted(stubs: Stubs) -> None:
    image = (
        await stubs.images.CreateImage(
            images_pb2.CreateImageRequest(
                image=images_pb2.Image(name="keep", owner="p", protected=True)
            )
        )
    ).image
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.images.DeleteImage(images_pb2.DeleteImageRequest(id=image.id, project_id="p"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_retried_image_create_returns_the_first_image(stubs: Stubs) -> None:
    req = images_pb2.CreateImageRequest(
        request_id="req-1", image=images_pb2.Image(name="once", owner="p")
    )
    first = (await stubs.images.CreateImage(req)).image
    again = (await stubs.images.CreateImage(req)).image
    assert again.id == first.id
    listed = await stubs.images.ListImages(images_pb2.ListImagesRequest(project_id="p"))
    assert [i.id for i in listed.images] == [first.id]
