"""Reconcile at start: what libvirt runs against what the control plane recorded.

Planning is pure (this module); the agent applies the plan under its host lock.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

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
    }
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
        if actual is None:
            at_rest = (
                exp.vm_state in _AT_REST and exp.task_state == servers_pb2.TASK_STATE_UNSPECIFIED
            )
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
