"""The same_host and different_host filters: which hosts pass, given where the instances
their hints name are."""

from __future__ import annotations

from controlplane.scheduler.filters import REGISTRY, different_host, same_host
from controlplane.scheduler.request import CycleState, HintHosts
from tests.scheduler.factories import DOWN_AFTER, NOW, make_host, make_request


def cycle(hints: HintHosts) -> CycleState:
    return CycleState(request=make_request(), now=NOW, down_after=DOWN_AFTER, hint_hosts=hints)


def verdicts(
    flt: same_host.SameHostFilter | different_host.DifferentHostFilter, hints: HintHosts
) -> dict[str, str]:
    """Each host's verdict: "" when it passes, the reason when it is rejected."""
    return {
        name: flt.filter_host(make_host(name), cycle(hints)).reason for name in ("h1", "h2", "h3")
    }


def test_both_hint_filters_are_in_the_registry_under_their_hint_names() -> None:
    assert REGISTRY["same_host"] is same_host.SameHostFilter
    assert REGISTRY["different_host"] is different_host.DifferentHostFilter


def test_without_hints_every_host_passes_both_filters() -> None:
    for flt in (same_host.SameHostFilter(), different_host.DifferentHostFilter()):
        assert verdicts(flt, HintHosts()) == {"h1": "", "h2": "", "h3": ""}


def test_same_host_keeps_only_the_hosts_holding_a_named_instance() -> None:
    found = verdicts(same_host.SameHostFilter(), HintHosts(same_host=frozenset({"h1", "h3"})))
    assert found == {"h1": "", "h2": same_host.REASON_NOT_SAME_HOST, "h3": ""}


def test_same_host_whose_instances_are_nowhere_leaves_no_host() -> None:
    found = verdicts(same_host.SameHostFilter(), HintHosts(same_host=frozenset()))
    assert set(found.values()) == {same_host.REASON_NOT_SAME_HOST}


def test_different_host_rejects_the_hosts_holding_a_named_instance() -> None:
    found = verdicts(
        different_host.DifferentHostFilter(), HintHosts(different_host=frozenset({"h2"}))
    )
    assert found == {"h1": "", "h2": different_host.REASON_SAME_HOST, "h3": ""}
