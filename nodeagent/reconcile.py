"""Reconcile at start: what libvirt runs against what the control plane recorded.

Planning is pure (this module); the agent applies the plan under its host lock.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace

from loom.conductor.v1 import servers_pb2

from nodeagent.driver.base import PowerState
from nodeagent.fleet import ExpectedInstance

# Instances at rest in these states should have a domain. Building, erroring or busy ones
# are left alone: their commands are redelivered by JetStream and finish the task.
_AT_REST = frozenset(
    {
        servers_pb2.VM_STATE_ACTIVE,
        servers_pb2.VM_STATE_STOPPED,
        servers_pb2.VM_STATE_PAUSED,
        servers_pb2.VM_STATE_SUSPENDED,
        servers_pb2.VM_STATE_SHELVED,
        # Powered off, kept until reclaimed or restored.
        servers_pb2.VM_STATE_SOFT_DELETED,
        # Moved here, waiting for a confirm or a revert (VERIFY_RESIZE).
        servers_pb2.VM_STATE_RESIZED,
    }
)

# Tasks whose command acts on an existing domain of this host. On a hypervisor whose
# domains die with the agent (test:///) such a domain is re-created, in its recorded power
# state, so that the redelivered command finds it (chaos scenario R2); a build makes its
# own domain and a delete needs none.
_ACTS_ON_DOMAIN = frozenset(
    {
        servers_pb2.TASK_STATE_POWERING_OFF,
        servers_pb2.TASK_STATE_POWERING_ON,
        servers_pb2.TASK_STATE_REBOOTING,
        servers_pb2.TASK_STATE_REBOOTING_HARD,
        servers_pb2.TASK_STATE_RESIZE_MIGRATING,
        servers_pb2.TASK_STATE_PAUSING,
        servers_pb2.TASK_STATE_UNPAUSING,
        servers_pb2.TASK_STATE_SUSPENDING,
        servers_pb2.TASK_STATE_RESUMING,
        servers_pb2.TASK_STATE_SHELVING,
        # A shelved server still on this host is started again.
        servers_pb2.TASK_STATE_UNSHELVING,
        servers_pb2.TASK_STATE_IMAGE_SNAPSHOT,
        servers_pb2.TASK_STATE_IMAGE_BACKUP,
        # The moved server runs here while the source drops its copy.
        servers_pb2.TASK_STATE_RESIZE_CONFIRMING,
        # Back on its source, which starts the domain it kept (re-created shut off, see
        # below; before the destination has dropped its copy the server is still the
        # destination's, and that copy goes anyway).
        servers_pb2.TASK_STATE_RESIZE_REVERTING,
    }
)

# Tasks in which this host is a resize's source that has stopped the server and keeps
# its domain, shut off, for a revert: the server is not on the destination yet (finish),
# or is coming back (reverting; the revert starts it if the server ran).
_SOURCE_KEPT_SHUT_OFF = frozenset(
    {
        servers_pb2.TASK_STATE_RESIZE_MIGRATED,
        servers_pb2.TASK_STATE_RESIZE_FINISH,
        servers_pb2.TASK_STATE_RESIZE_REVERTING,
    }
)

# A resize's source keeps its domain, shut off, for as long as a revert may need it: while
# the server waits in VERIFY_RESIZE and while it is reverted. Any other copy a move keeps
# (a destination still being defined, a source being dropped) comes from its command.
_KEPT_FOR_REVERT = frozenset(
    {servers_pb2.TASK_STATE_UNSPECIFIED, servers_pb2.TASK_STATE_RESIZE_REVERTING}
)


@dataclass(frozen=True)
class ReconcilePlan:
    """recreate: domains to build again (non-persistent hypervisor); missing: to report;
    drifted: (instance, actual power state) to report; orphans: domains to destroy."""

    recreate: tuple[ExpectedInstance, ...] = ()
    missing: tuple[str, ...] = ()
    drifted: tuple[tuple[str, PowerState], ...] = ()
    orphans: tuple[str, ...] = ()


def wanted_power_on(expected: ExpectedInstance) -> bool:
    if expected.power_state != PowerState.NOSTATE:
        # A paused guest is re-created running, then paused again.
        return expected.power_state in (PowerState.RUNNING, PowerState.PAUSED)
    return bool(expected.vm_state == servers_pb2.VM_STATE_ACTIVE)


def plan_reconcile(
    expected: Iterable[ExpectedInstance],
    before: Mapping[str, PowerState],
    now: Mapping[str, PowerState],
    *,
    persistent: bool,
    deleted_since_start: Collection[str] = (),
) -> ReconcilePlan:
    """`before` is libvirt's view taken before asking the conductor, `now` after it.

    Orphans are taken from `before` so that a domain a build command made while the
    conductor was being asked is never mistaken for one. Instances deleted by a command
    since the agent started are neither recreated nor reported.
    """
    recreate: list[ExpectedInstance] = []
    missing: list[str] = []
    drifted: list[tuple[str, PowerState]] = []
    listed: set[str] = set()
    for exp in expected:
        iid = exp.instance_id
        listed.add(iid)
        if iid in deleted_since_start:
            continue
        actual = now.get(iid)
        if exp.move_copy:
            # Its states are those of its own host: only a source's kept domain is re-created
            # (shut off), and nothing is reported about a copy.
            if (
                actual is None
                and not persistent
                and exp.vm_state == servers_pb2.VM_STATE_RESIZED
                and exp.task_state in _KEPT_FOR_REVERT
            ):
                recreate.append(replace(exp, power_state=PowerState.SHUTDOWN))
            continue
        if actual is None:
            at_rest = (
                exp.vm_state in _AT_REST and exp.task_state == servers_pb2.TASK_STATE_UNSPECIFIED
            )
            if not persistent and exp.task_state in _SOURCE_KEPT_SHUT_OFF:
                recreate.append(replace(exp, power_state=PowerState.SHUTDOWN))
                continue
            if not persistent and exp.task_state in _ACTS_ON_DOMAIN:
                recreate.append(exp)
                continue
            if not at_rest:
                continue
            if persistent:
                missing.append(iid)
            else:
                recreate.append(exp)
        elif exp.power_state != PowerState.NOSTATE and actual != exp.power_state:
            drifted.append((iid, actual))
    orphans = [iid for iid in before if iid not in listed and iid in now]
    return ReconcilePlan(
        recreate=tuple(recreate),
        missing=tuple(missing),
        drifted=tuple(drifted),
        orphans=tuple(sorted(orphans)),
    )
