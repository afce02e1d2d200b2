"""A server's states and the rules between them, as Nova names them. Pure: no I/O.

vm_state is where a server rests, task_state what is happening to it right now, and
power_state what the hypervisor last reported. The status a tenant sees is derived
from (vm_state, task_state), never stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum

from controlplane.runtime.errors import Conflict


class VmState(StrEnum):
    BUILDING = "building"
    ACTIVE = "active"
    STOPPED = "stopped"
    ERROR = "error"
    DELETED = "deleted"
    PAUSED = "paused"
    SUSPENDED = "suspended"
    RESIZED = "resized"


class TaskState(StrEnum):
    SCHEDULING = "scheduling"
    SPAWNING = "spawning"
    POWERING_OFF = "powering-off"
    POWERING_ON = "powering-on"
    REBOOTING = "rebooting"
    REBOOTING_HARD = "rebooting_hard"
    DELETING = "deleting"
    RESIZE_PREP = "resize_prep"
    RESIZE_MIGRATING = "resize_migrating"
    RESIZE_MIGRATED = "resize_migrated"
    RESIZE_FINISH = "resize_finish"
    RESIZE_REVERTING = "resize_reverting"
    RESIZE_CONFIRMING = "resize_confirming"
    MIGRATING = "migrating"


class PowerState(IntEnum):
    """Nova's numbering, which loom.compute.v1.PowerState shares."""

    NOSTATE = 0
    RUNNING = 1
    PAUSED = 3
    SHUTDOWN = 4
    CRASHED = 6
    SUSPENDED = 7


class Status(StrEnum):
    BUILD = "BUILD"
    ACTIVE = "ACTIVE"
    SHUTOFF = "SHUTOFF"
    ERROR = "ERROR"
    REBOOT = "REBOOT"
    HARD_REBOOT = "HARD_REBOOT"
    DELETED = "DELETED"
    PAUSED = "PAUSED"
    SUSPENDED = "SUSPENDED"
    UNKNOWN = "UNKNOWN"
    RESIZE = "RESIZE"
    VERIFY_RESIZE = "VERIFY_RESIZE"
    REVERT_RESIZE = "REVERT_RESIZE"
    MIGRATING = "MIGRATING"


_BY_VM_STATE = {
    VmState.BUILDING: Status.BUILD,
    VmState.ACTIVE: Status.ACTIVE,
    VmState.STOPPED: Status.SHUTOFF,
    VmState.ERROR: Status.ERROR,
    VmState.DELETED: Status.DELETED,
    VmState.PAUSED: Status.PAUSED,
    VmState.SUSPENDED: Status.SUSPENDED,
    VmState.RESIZED: Status.VERIFY_RESIZE,
}

# Tasks that show through the stable state's status (Nova's _STATE_MAP, trimmed to Loom's tasks).
_BY_TASK = {
    (VmState.ACTIVE, TaskState.REBOOTING): Status.REBOOT,
    (VmState.ACTIVE, TaskState.REBOOTING_HARD): Status.HARD_REBOOT,
    (VmState.STOPPED, TaskState.REBOOTING_HARD): Status.HARD_REBOOT,
    (VmState.ERROR, TaskState.REBOOTING_HARD): Status.HARD_REBOOT,
    **{
        (vm, task): Status.RESIZE
        for vm in (VmState.ACTIVE, VmState.STOPPED)
        for task in (
            TaskState.RESIZE_PREP,
            TaskState.RESIZE_MIGRATING,
            TaskState.RESIZE_MIGRATED,
            TaskState.RESIZE_FINISH,
        )
    },
    (VmState.RESIZED, TaskState.RESIZE_REVERTING): Status.REVERT_RESIZE,
    (VmState.ACTIVE, TaskState.MIGRATING): Status.MIGRATING,
}


def derive_status(vm_state: str, task_state: str | None) -> Status:
    """The status for (vm_state, task_state); UNKNOWN for a vm_state Loom does not know."""
    try:
        vm = VmState(vm_state)
    except ValueError:
        return Status.UNKNOWN
    if task_state is not None:
        try:
            task = TaskState(task_state)
        except ValueError:
            task = None
        if task is not None and (vm, task) in _BY_TASK:
            return _BY_TASK[(vm, task)]
    return _BY_VM_STATE[vm]


@dataclass(frozen=True)
class StatusFilter:
    """The rows a status filter matches: vm_state in vm_states, and task_state in only_tasks
    (when given) and not in except_tasks. Lets a status filter run as a WHERE clause."""

    vm_states: frozenset[str]
    only_tasks: frozenset[str] | None
    except_tasks: frozenset[str]


def status_filter(status: Status) -> StatusFilter:
    """Exactly the (vm_state, task_state) pairs whose derived status is `status`."""
    special = [(vm, task) for (vm, task), st in _BY_TASK.items() if st is status]
    if special:
        return StatusFilter(
            frozenset(vm.value for vm, _ in special),
            frozenset(task.value for _, task in special),
            frozenset(),
        )
    vm_states = frozenset(vm.value for vm, st in _BY_VM_STATE.items() if st is status)
    # Tasks that make these vm_states show another status (an active server rebooting
    # shows REBOOT, not ACTIVE).
    excluded = frozenset(task.value for (vm, task) in _BY_TASK if vm.value in vm_states)
    return StatusFilter(vm_states, None, excluded)


class InvalidState(Conflict):
    """The action does not fit the server's state. The message names the state."""

    def __init__(self, action: str, vm_state: str, task_state: str | None) -> None:
        self.action = action
        self.vm_state = vm_state
        self.task_state = task_state
        task = task_state or "none"
        super().__init__(
            f"Cannot '{action}' instance while it is in vm_state {vm_state} and task_state {task}"
        )


def check_start(vm_state: str, task_state: str | None) -> None:
    """Passes only for a stopped server with no task; raises InvalidState otherwise."""
    if vm_state != VmState.STOPPED or task_state is not None:
        raise InvalidState("start", vm_state, task_state)


def check_stop(vm_state: str, task_state: str | None) -> None:
    """Passes for an active or errored server with no task; raises InvalidState otherwise."""
    if vm_state not in (VmState.ACTIVE, VmState.ERROR) or task_state is not None:
        raise InvalidState("stop", vm_state, task_state)


def check_reboot(vm_state: str, task_state: str | None, *, hard: bool) -> None:
    """Soft reboots need an active server with no task. Hard reboots also take stopped and
    errored servers, and may override a soft reboot under way; raises InvalidState otherwise."""
    action = "reboot" if not hard else "reboot (hard)"
    if not hard:
        if vm_state != VmState.ACTIVE or task_state is not None:
            raise InvalidState(action, vm_state, task_state)
        return
    if vm_state not in (VmState.ACTIVE, VmState.STOPPED, VmState.ERROR):
        raise InvalidState(action, vm_state, task_state)
    if task_state not in (None, TaskState.REBOOTING):
        raise InvalidState(action, vm_state, task_state)


def reboot_task(hard: bool) -> TaskState:
    return TaskState.REBOOTING_HARD if hard else TaskState.REBOOTING


def can_delete(vm_state: str, task_state: str | None) -> bool:
    """Every state may be deleted; a deleted server needs nothing more (delete is idempotent)."""
    return vm_state != VmState.DELETED


def after_action(verb: str, succeeded: bool, power_state: int) -> tuple[VmState, int]:
    """The (vm_state, power_state) a finished start/stop/reboot leaves; task_state is cleared.

    A failed action settles on what the host reports: running means active, anything else
    stopped (Nova's behaviour after a failed power action is to trust the hypervisor).
    """
    if succeeded:
        if verb == "stop":
            return VmState.STOPPED, PowerState.SHUTDOWN
        return VmState.ACTIVE, PowerState.RUNNING
    if power_state == PowerState.RUNNING:
        return VmState.ACTIVE, power_state
    if power_state in (PowerState.SHUTDOWN, PowerState.CRASHED):
        return VmState.STOPPED, power_state
    return VmState.ERROR, power_state


def power_sync(vm_state: str, task_state: str | None, power_state: int) -> VmState | None:
    """Nova's power sync: an active server with no task found shut down becomes stopped.

    Returns the new vm_state, or None when nothing changes.
    """
    if (
        vm_state == VmState.ACTIVE
        and task_state is None
        and power_state in (PowerState.SHUTDOWN, PowerState.CRASHED)
    ):
        return VmState.STOPPED
    # A stopped server found running is left stopped with the power state recorded: Nova
    # would stop it again, which needs a command, and that is the operator's call in Loom.
    return None


# -- moves (resize, cold migration) -----------------------------------------------------

MOVE_TASKS = frozenset(
    {
        TaskState.RESIZE_PREP,
        TaskState.RESIZE_MIGRATING,
        TaskState.RESIZE_MIGRATED,
        TaskState.RESIZE_FINISH,
        TaskState.RESIZE_REVERTING,
        TaskState.RESIZE_CONFIRMING,
        TaskState.MIGRATING,
    }
)


def check_move(action: str, vm_state: str, task_state: str | None) -> None:
    """A resize or migration needs an active or stopped server with no task."""
    if vm_state not in (VmState.ACTIVE, VmState.STOPPED) or task_state is not None:
        raise InvalidState(action, vm_state, task_state)


def check_resized(action: str, vm_state: str, task_state: str | None) -> None:
    """A confirm or revert needs a moved server (VERIFY_RESIZE) with no task."""
    if vm_state != VmState.RESIZED or task_state is not None:
        raise InvalidState(action, vm_state, task_state)


def check_live_migration(action: str, vm_state: str, task_state: str | None) -> None:
    """A live migration needs a running (active) server with no task."""
    if vm_state != VmState.ACTIVE or task_state is not None:
        raise InvalidState(action, vm_state, task_state)
