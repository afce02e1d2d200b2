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
    SHELVED = "shelved"
    SHELVED_OFFLOADED = "shelved_offloaded"
    SOFT_DELETED = "soft-delete"


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
    PAUSING = "pausing"
    UNPAUSING = "unpausing"
    SUSPENDING = "suspending"
    RESUMING = "resuming"
    SHELVING = "shelving"
    SHELVING_OFFLOADING = "shelving_offloading"
    UNSHELVING = "unshelving"
    REBUILDING = "rebuilding"
    REBUILD_SPAWNING = "rebuild_spawning"
    SOFT_DELETING = "soft-deleting"
    RESTORING = "restoring"
    IMAGE_SNAPSHOT = "image_snapshot"
    IMAGE_BACKUP = "image_backup"


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
    SHELVED = "SHELVED"
    SHELVED_OFFLOADED = "SHELVED_OFFLOADED"
    REBUILD = "REBUILD"
    UNKNOWN = "UNKNOWN"
    RESIZE = "RESIZE"
    VERIFY_RESIZE = "VERIFY_RESIZE"
    REVERT_RESIZE = "REVERT_RESIZE"
    MIGRATING = "MIGRATING"
    SOFT_DELETED = "SOFT_DELETED"


_BY_VM_STATE = {
    VmState.BUILDING: Status.BUILD,
    VmState.ACTIVE: Status.ACTIVE,
    VmState.STOPPED: Status.SHUTOFF,
    VmState.ERROR: Status.ERROR,
    VmState.DELETED: Status.DELETED,
    VmState.PAUSED: Status.PAUSED,
    VmState.SUSPENDED: Status.SUSPENDED,
    VmState.RESIZED: Status.VERIFY_RESIZE,
    VmState.SHELVED: Status.SHELVED,
    VmState.SHELVED_OFFLOADED: Status.SHELVED_OFFLOADED,
    VmState.SOFT_DELETED: Status.SOFT_DELETED,
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
    **{
        (vm, task): Status.REBUILD
        for vm in (VmState.ACTIVE, VmState.STOPPED, VmState.ERROR)
        for task in (TaskState.REBUILDING, TaskState.REBUILD_SPAWNING)
    },
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

    def __init__(
        self, action: str, vm_state: str, task_state: str | None, instance_uuid: str = ""
    ) -> None:
        self.action = action
        self.vm_state = vm_state
        self.task_state = task_state
        task = task_state or "none"
        if instance_uuid:
            # The API's own shape: the one attribute that stands in the way.
            attr, state = ("task_state", task) if task_state is not None else ("vm_state", vm_state)
            text = f"Cannot '{action}' instance {instance_uuid} while it is in {attr} {state}"
        else:
            text = (
                f"Cannot '{action}' instance while it is in vm_state {vm_state} "
                f"and task_state {task}"
            )
        super().__init__(text)


def _refuse(
    action: str, vm_state: str, task_state: str | None, instance_uuid: str, *, vm_ok: bool
) -> InvalidState:
    """The refusal; with the instance's uuid, in the API's shape naming the one attribute
    in the way (the vm_state when it is wrong, else the task_state)."""
    if instance_uuid and not vm_ok:
        return InvalidState(action, vm_state, None, instance_uuid)
    return InvalidState(action, vm_state, task_state, instance_uuid)


def check_start(vm_state: str, task_state: str | None, *, instance_uuid: str = "") -> None:
    """Passes only for a stopped server with no task; raises InvalidState otherwise."""
    if vm_state != VmState.STOPPED or task_state is not None:
        raise _refuse(
            "start", vm_state, task_state, instance_uuid, vm_ok=vm_state == VmState.STOPPED
        )


def check_stop(vm_state: str, task_state: str | None, *, instance_uuid: str = "") -> None:
    """Passes for an active or errored server with no task; raises InvalidState otherwise."""
    vm_ok = vm_state in (VmState.ACTIVE, VmState.ERROR)
    if not vm_ok or task_state is not None:
        raise _refuse("stop", vm_state, task_state, instance_uuid, vm_ok=vm_ok)


def check_reboot(
    vm_state: str, task_state: str | None, *, hard: bool, instance_uuid: str = ""
) -> None:
    """Soft reboots need an active server with no task. Hard reboots also take stopped and
    errored servers, and may override a soft reboot under way; raises InvalidState otherwise."""
    action = "reboot" if not hard else "reboot (hard)"
    if not hard:
        vm_ok = vm_state == VmState.ACTIVE
        if not vm_ok or task_state is not None:
            raise _refuse(action, vm_state, task_state, instance_uuid, vm_ok=vm_ok)
        return
    vm_ok = vm_state in (VmState.ACTIVE, VmState.STOPPED, VmState.ERROR)
    if not vm_ok or task_state not in (None, TaskState.REBOOTING):
        raise _refuse(action, vm_state, task_state, instance_uuid, vm_ok=vm_ok)


@dataclass(frozen=True)
class SimpleAction:
    """An action that takes one stable state to another through one task on the host."""

    verb: str
    allowed_from: frozenset[VmState]
    task: TaskState
    ends_in: VmState
    ends_powered: PowerState


# Nova's rules: pause and suspend need an active server, unpause a paused one, resume a
# suspended one; none of them may interrupt a task.
SIMPLE_ACTIONS = {
    a.verb: a
    for a in (
        SimpleAction(
            "pause",
            frozenset({VmState.ACTIVE}),
            TaskState.PAUSING,
            VmState.PAUSED,
            PowerState.PAUSED,
        ),
        SimpleAction(
            "unpause",
            frozenset({VmState.PAUSED}),
            TaskState.UNPAUSING,
            VmState.ACTIVE,
            PowerState.RUNNING,
        ),
        SimpleAction(
            "suspend",
            frozenset({VmState.ACTIVE}),
            TaskState.SUSPENDING,
            VmState.SUSPENDED,
            PowerState.SUSPENDED,
        ),
        # Shelve keeps the disk on the host; offload frees the host; unshelve of a server
        # still on its host powers it on (an offloaded one is scheduled and built again).
        SimpleAction(
            "shelve",
            frozenset({VmState.ACTIVE, VmState.STOPPED, VmState.PAUSED, VmState.SUSPENDED}),
            TaskState.SHELVING,
            VmState.SHELVED,
            PowerState.SHUTDOWN,
        ),
        SimpleAction(
            "shelve_offload",
            frozenset({VmState.SHELVED}),
            TaskState.SHELVING_OFFLOADING,
            VmState.SHELVED_OFFLOADED,
            PowerState.NOSTATE,
        ),
        SimpleAction(
            "unshelve",
            frozenset({VmState.SHELVED, VmState.SHELVED_OFFLOADED}),
            TaskState.UNSHELVING,
            VmState.ACTIVE,
            PowerState.RUNNING,
        ),
        SimpleAction(
            "resume",
            frozenset({VmState.SUSPENDED}),
            TaskState.RESUMING,
            VmState.ACTIVE,
            PowerState.RUNNING,
        ),
    )
}


def check_simple(
    action: SimpleAction, instance_uuid: str, vm_state: str, task_state: str | None
) -> None:
    """Passes only from one of the action's allowed vm_states with no task; the refusal
    names the vm_state when that is wrong, else the task_state."""
    if vm_state not in action.allowed_from:
        raise InvalidState(action.verb, vm_state, None, instance_uuid)
    if task_state is not None:
        raise InvalidState(action.verb, vm_state, task_state, instance_uuid)


def check_rebuild(instance_uuid: str, vm_state: str, task_state: str | None) -> None:
    """Rebuilds take active, stopped and errored servers with no task."""
    if vm_state not in (VmState.ACTIVE, VmState.STOPPED, VmState.ERROR):
        raise InvalidState("rebuild", vm_state, None, instance_uuid)
    if task_state is not None:
        raise InvalidState("rebuild", vm_state, task_state, instance_uuid)


REBUILD_TASKS = frozenset({TaskState.REBUILDING.value, TaskState.REBUILD_SPAWNING.value})


def reboot_task(hard: bool) -> TaskState:
    return TaskState.REBOOTING_HARD if hard else TaskState.REBOOTING


def check_soft_delete(vm_state: str, task_state: str | None) -> bool:
    """Whether a delete may be soft (Nova: a server that was launched, with no task, in a
    state the host can power off from); otherwise the delete is a real one."""
    return task_state is None and vm_state in (
        VmState.ACTIVE,
        VmState.STOPPED,
        VmState.PAUSED,
        VmState.SUSPENDED,
        VmState.ERROR,
    )


def check_restore(instance_uuid: str, vm_state: str, task_state: str | None) -> None:
    """Only a soft-deleted server with no task may be restored."""
    if vm_state != VmState.SOFT_DELETED:
        raise InvalidState("restore", vm_state, None, instance_uuid)
    if task_state is not None:
        raise InvalidState("restore", vm_state, task_state, instance_uuid)


# The states a snapshot may be taken in (Nova's): the guest keeps its state.
SNAPSHOT_STATES = frozenset({VmState.ACTIVE, VmState.STOPPED, VmState.PAUSED, VmState.SUSPENDED})


def check_snapshot(
    instance_uuid: str, vm_state: str, task_state: str | None, action: str = "createImage"
) -> None:
    """A snapshot (or backup) needs an active, stopped, paused or suspended server with no
    task."""
    if vm_state not in SNAPSHOT_STATES or task_state is not None:
        raise InvalidState(action, vm_state, task_state, instance_uuid)


def can_delete(vm_state: str, task_state: str | None) -> bool:
    """Every state may be deleted; a deleted server needs nothing more (delete is idempotent)."""
    return vm_state != VmState.DELETED


def after_action(verb: str, succeeded: bool, power_state: int) -> tuple[VmState, int]:
    """The (vm_state, power_state) a finished action on the host (start, stop, reboot, pause,
    unpause, suspend, resume) leaves; task_state is cleared.

    A failed action settles on what the host reports: running means active, anything else
    stopped (Nova's behaviour after a failed power action is to trust the hypervisor).
    """
    simple = SIMPLE_ACTIONS.get(verb)
    if succeeded and verb == "rebuild":
        # A server that was shut off is rebuilt and left shut off.
        if power_state == PowerState.SHUTDOWN:
            return VmState.STOPPED, PowerState.SHUTDOWN
        return VmState.ACTIVE, PowerState.RUNNING
    if succeeded:
        if simple is not None:
            return simple.ends_in, simple.ends_powered
        if verb == "stop":
            return VmState.STOPPED, PowerState.SHUTDOWN
        return VmState.ACTIVE, PowerState.RUNNING
    if verb in ("shelve_offload", "unshelve") and power_state != PowerState.RUNNING:
        # The domain is still there, shut off: the server stays shelved.
        return VmState.SHELVED, power_state
    if power_state == PowerState.RUNNING:
        return VmState.ACTIVE, power_state
    if power_state == PowerState.PAUSED:
        return VmState.PAUSED, power_state
    if verb in ("suspend", "resume") and power_state in (
        PowerState.SHUTDOWN,
        PowerState.SUSPENDED,
    ):
        # The saved memory is kept by the host until a resume consumes it.
        return VmState.SUSPENDED, power_state
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
    """A live migration needs a running (active) or paused server with no task."""
    if vm_state not in (VmState.ACTIVE, VmState.PAUSED) or task_state is not None:
        raise InvalidState(action, vm_state, task_state)
