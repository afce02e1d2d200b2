"""The aggregate filters, table-driven: each case a sentence."""

from __future__ import annotations

import pytest

from controlplane.scheduler.filters.aggregate_image_properties_isolation import (
    AggregateImagePropertiesIsolationFilter,
)
from controlplane.scheduler.filters.aggregate_instance_extra_specs import (
    REASON_MISMATCH,
    REASON_NO_METADATA,
    AggregateInstanceExtraSpecsFilter,
)
from controlplane.scheduler.filters.aggregate_multitenancy_isolation import (
    REASON_OTHER_TENANTS,
    AggregateMultiTenancyIsolationFilter,
)
from controlplane.scheduler.filters.enabled_and_up import REASON_FORCED_DOWN, EnabledAndUpFilter
from controlplane.scheduler.filters.extra_specs_ops import matches
from tests.scheduler.factories import make_cycle, make_host, make_request

M = dict[str, tuple[str, ...]]


@pytest.mark.parametrize(
    ("metadata", "specs", "passes", "reason"),
    [
        pytest.param({}, {}, True, "", id="a flavor without matching keys passes anywhere"),
        pytest.param(
            {}, {"hw:cpu_policy": "dedicated"}, True, "", id="other scopes are not this filter's"
        ),
        pytest.param(
            {"ssd": ("true",)}, {"ssd": "true"}, True, "", id="an unscoped key matches metadata"
        ),
        pytest.param(
            {"ssd": ("true",)},
            {"aggregate_instance_extra_specs:ssd": "true"},
            True,
            "",
            id="the scoped key matches without its scope",
        ),
        pytest.param(
            {}, {"ssd": "true"}, False, REASON_NO_METADATA, id="a host without the key is removed"
        ),
        pytest.param(
            {"ssd": ("false",)},
            {"ssd": "true"},
            False,
            REASON_MISMATCH,
            id="a host with another value is removed",
        ),
        pytest.param(
            {"ssd": ("false", "true")},
            {"ssd": "true"},
            True,
            "",
            id="one of the host's aggregates giving the value is enough",
        ),
        pytest.param(
            {"cores": ("8",)}, {"cores": ">= 4"}, True, "", id="numeric operators compare numbers"
        ),
        pytest.param(
            {"cores": ("2",)},
            {"cores": ">= 4"},
            False,
            REASON_MISMATCH,
            id="a number below the bound is removed",
        ),
    ],
)
def test_aggregate_instance_extra_specs(
    metadata: M, specs: dict[str, str], passes: bool, reason: str
) -> None:
    host = make_host(metadata=metadata)
    verdict = AggregateInstanceExtraSpecsFilter().filter_host(
        host, make_cycle(make_request(extra_specs=specs))
    )
    assert (verdict.passed, verdict.reason) == (passes, reason)


@pytest.mark.parametrize(
    ("metadata", "project", "passes"),
    [
        pytest.param({}, "p1", True, id="a host in no isolated aggregate takes anyone"),
        pytest.param({"filter_tenant_id": ("p1",)}, "p1", True, id="the named project passes"),
        pytest.param({"filter_tenant_id": ("p1",)}, "p2", False, id="another project is removed"),
        pytest.param(
            {"filter_tenant_id": ("p1, p2",)}, "p2", True, id="values are comma-separated lists"
        ),
        pytest.param(
            {"filter_tenant_id": ("p1",), "filter_tenant_id_2": ("p3",)},
            "p3",
            True,
            id="suffixed keys add projects",
        ),
        pytest.param({"ssd": ("true",)}, "p2", True, id="other metadata does not isolate"),
    ],
)
def test_aggregate_multitenancy_isolation(metadata: M, project: str, passes: bool) -> None:
    verdict = AggregateMultiTenancyIsolationFilter().filter_host(
        make_host(metadata=metadata), make_cycle(make_request(project_id=project))
    )
    assert verdict.passed is passes
    assert verdict.reason == ("" if passes else REASON_OTHER_TENANTS)


@pytest.mark.parametrize(
    ("metadata", "props", "passes"),
    [
        pytest.param({"os_distro": ("windows",)}, {}, True, id="an image without the property"),
        pytest.param({}, {"os_distro": "windows"}, True, id="a host in no aggregate"),
        pytest.param(
            {"os_distro": ("windows",)}, {"os_distro": "windows"}, True, id="the same value"
        ),
        pytest.param(
            {"os_distro": ("windows",)}, {"os_distro": "linux"}, False, id="another value"
        ),
        pytest.param(
            {"os_distro": ("windows,linux",)}, {"os_distro": "linux"}, True, id="one of a list"
        ),
    ],
)
def test_aggregate_image_properties_isolation(
    metadata: M, props: dict[str, str], passes: bool
) -> None:
    verdict = AggregateImagePropertiesIsolationFilter().filter_host(
        make_host(metadata=metadata), make_cycle(make_request(image_properties=props))
    )
    assert verdict.passed is passes


def test_a_forced_down_host_is_removed_whatever_its_heartbeats_say() -> None:
    verdict = EnabledAndUpFilter().filter_host(make_host(up=True, forced_down=True), make_cycle())
    assert (verdict.passed, verdict.reason) == (False, REASON_FORCED_DOWN)


@pytest.mark.parametrize(
    ("value", "requirement", "expected"),
    [
        ("true", "true", True),
        ("4", "= 4", True),
        ("3", "= 4", False),
        ("abc", "s== abc", True),
        ("abc", "s!= abc", False),
        ("fast disk", "<in> disk", True),
        ("a b c", "<all-in> a c", True),
        ("b", "<or> a <or> b", True),
        ("c", "<or> a <or> b", False),
        ("x", "== 4", False),
    ],
)
def test_extra_spec_operators_compare_as_documented(
    value: str, requirement: str, expected: bool
) -> None:
    assert matches(value, requirement) is expected
