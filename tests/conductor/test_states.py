"""The state rules: which actions each state allows, and the status a tenant sees."""

from __future__ import annotations

import pytest

from controlplane.conductor import states
from controlplane.conductor.states import InvalidState, Status

A, S, E, B, D = "active", "stopped", "error", "building", "deleted"


@pytest.mark.parametrize(
    ("vm_state", "task_state", "allowed"),
    [
        pytest.param(S, None, True, id="a stopped server with no task may start"),
        pytest.param(A, None, False, id="an active server may not start"),
        pytest.param(S, "powering-off", False, id="a stopped server with a task may not start"),
        pytest.param(E, None, False, id="an errored server may not start"),
        pytest.param(B, "spawning", False, id="a building server may not start"),
    ],
)
def test_start_is_allowed_only_from_stopped_with_no_task(
    vm_state: str, task_state: str | None, allowed: bool
) -> None:
    if allowed:
        states.check_start(vm_state, task_state)
    else:
        with pytest.raises(InvalidState, match=vm_state):
            states.check_start(vm_state, task_state)


@pytest.mark.parametrize(
    ("vm_state", "task_state", "allowed"),
    [
        pytest.param(A, None, True, id="an active server may stop"),
        pytest.param(E, None, True, id="an errored server may stop"),
        pytest.param(S, None, False, id="a stopped server may not stop again"),
        pytest.param(A, "rebooting", False, id="a rebooting server may not stop"),
        pytest.param(B, "scheduling", False, id="a building server may not stop"),
    ],
)
def test_stop_is_allowed_from_active_or_error_with_no_task(
    vm_state: str, task_state: str | None, allowed: bool
) -> None:
    if allowed:
        states.check_stop(vm_state, task_state)
    else:
        with pytest.raises(InvalidState):
            states.check_stop(vm_state, task_state)


@pytest.mark.parametrize(
    ("vm_state", "task_state", "hard", "allowed"),
    [
        pytest.param(A, None, False, True, id="soft reboot of an active server"),
        pytest.param(S, None, False, False, id="no soft reboot of a stopped server"),
        pytest.param(E, None, False, False, id="no soft reboot of an errored server"),
        pytest.param(S, None, True, True, id="hard reboot of a stopped server"),
        pytest.param(E, None, True, True, id="hard reboot of an errored server"),
        pytest.param(A, "rebooting", True, True, id="a hard reboot overrides a soft one"),
        pytest.param(A, "rebooting", False, False, id="no soft reboot during a soft reboot"),
        pytest.param(A, "rebooting_hard", True, False, id="no hard reboot during a hard one"),
        pytest.param(A, "powering-off", True, False, id="no hard reboot while stopping"),
        pytest.param(B, "spawning", True, False, id="no reboot while building"),
    ],
)
def test_reboot_guards(vm_state: str, task_state: str | None, hard: bool, allowed: bool) -> None:
    if allowed:
        states.check_reboot(vm_state, task_state, hard=hard)
    else:
        with pytest.raises(InvalidState):
            states.check_reboot(vm_state, task_state, hard=hard)


def test_a_refused_action_names_the_state_in_its_message() -> None:
    with pytest.raises(InvalidState) as info:
        states.check_start("active", "rebooting")
    assert "vm_state active" in str(info.value)
    assert "task_state rebooting" in str(info.value)


@pytest.mark.parametrize("vm_state", [A, S, E, B])
def test_every_live_state_may_be_deleted(vm_state: str) -> None:
    assert states.can_delete(vm_state, None)
    assert states.can_delete(vm_state, "spawning")


def test_a_deleted_server_needs_no_further_delete() -> None:
    assert not states.can_delete(D, None)


@pytest.mark.parametrize(
    ("vm_state", "task_state", "status"),
    [
        (B, "scheduling", Status.BUILD),
        (B, "spawning", Status.BUILD),
        (A, None, Status.ACTIVE),
        (A, "powering-off", Status.ACTIVE),
        (A, "rebooting", Status.REBOOT),
        (A, "rebooting_hard", Status.HARD_REBOOT),
        (S, None, Status.SHUTOFF),
        (S, "powering-on", Status.SHUTOFF),
        (S, "rebooting_hard", Status.HARD_REBOOT),
        (E, None, Status.ERROR),
        (D, None, Status.DELETED),
        ("weird", None, Status.UNKNOWN),
    ],
)
def test_status_is_derived_as_nova_derives_it(
    vm_state: str, task_state: str | None, status: Status
) -> None:
    assert states.derive_status(vm_state, task_state) is status


def test_a_status_filter_selects_exactly_the_states_that_derive_it() -> None:
    tasks = [None, *(t.value for t in states.TaskState)]
    combos = [(v.value, t) for v in states.VmState for t in tasks]
    for status in Status:
        f = states.status_filter(status)
        selected = {
            (v, t)
            for v, t in combos
            if v in f.vm_states
            and (f.only_tasks is None or t in f.only_tasks)
            and t not in f.except_tasks
        }
        derived = {(v, t) for v, t in combos if states.derive_status(v, t) is status}
        assert selected == derived, status


def test_power_sync_stops_an_active_idle_server_found_shut_down() -> None:
    assert states.power_sync(A, None, states.PowerState.SHUTDOWN) is states.VmState.STOPPED
    assert states.power_sync(A, "rebooting", states.PowerState.SHUTDOWN) is None
    assert states.power_sync(A, None, states.PowerState.RUNNING) is None


def test_a_finished_stop_leaves_the_server_stopped_and_shut_down() -> None:
    assert states.after_action("stop", True, 4) == (states.VmState.STOPPED, 4)
    assert states.after_action("start", True, 1) == (states.VmState.ACTIVE, 1)
    assert states.after_action("reboot", False, 1) == (states.VmState.ACTIVE, 1)
    assert states.after_action("start", False, 0) == (states.VmState.ERROR, 0)


@pytest.mark.parametrize(
    ("vm_state", "task_state", "status"),
    [
        ("paused", None, "PAUSED"),
        ("paused", "unpausing", "PAUSED"),
        ("active", "pausing", "ACTIVE"),
        ("suspended", "resuming", "SUSPENDED"),
        ("shelved", None, "SHELVED"),
        ("shelved", "shelving_offloading", "SHELVED"),
        ("shelved_offloaded", None, "SHELVED_OFFLOADED"),
        ("shelved_offloaded", "spawning", "SHELVED_OFFLOADED"),
        ("active", "rebuilding", "REBUILD"),
        ("stopped", "rebuild_spawning", "REBUILD"),
        ("error", "rebuilding", "REBUILD"),
    ],
)
def test_the_new_states_show_the_status_the_api_gives_them(
    vm_state: str, task_state: str | None, status: str
) -> None:
    assert states.derive_status(vm_state, task_state) == status


def test_a_rebuild_status_filter_matches_only_rebuilding_servers() -> None:
    f = states.status_filter(states.Status.REBUILD)
    assert f.vm_states == {"active", "stopped", "error"}
    assert f.only_tasks == {"rebuilding", "rebuild_spawning"}
    active = states.status_filter(states.Status.ACTIVE)
    assert {"rebuilding", "rebuild_spawning"} <= active.except_tasks


def test_a_soft_deleted_server_shows_soft_deleted_and_only_it_may_be_restored() -> None:
    assert states.derive_status("soft-delete", None) is states.Status.SOFT_DELETED
    states.check_restore("u", "soft-delete", None)
    for vm_state, task_state in (("active", None), ("soft-delete", "restoring")):
        with pytest.raises(states.InvalidState):
            states.check_restore("u", vm_state, task_state)


def test_only_a_server_at_rest_on_its_host_is_soft_deleted() -> None:
    assert states.check_soft_delete("active", None)
    assert states.check_soft_delete("stopped", None)
    assert not states.check_soft_delete("active", "rebooting")
    assert not states.check_soft_delete("building", None)
    assert not states.check_soft_delete("shelved_offloaded", None)
