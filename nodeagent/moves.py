"""The agent's side of moving an instance between hosts (MoveInstanceCommand).

Each step is idempotent and answers with an InstanceEvent whose `action` is the step's
verb and whose `migration_id` is the command's; the conductor (controlplane/conductor/
moves.py) owns the protocol and decides the next step.

    move_stop_source     power off, keep the domain and its disks     (source)
    move_finish_dest     define with the new flavor, start if it ran  (destination)
                         (an evacuation's, from_image: fresh disks from the image)
    move_drop            destroy what the move left here              (either)
    move_restore_source  start the kept domain again if it ran        (source)
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from loom.compute.v1 import agent_bus_pb2

from nodeagent import messages as m
from nodeagent.driver.base import (
    BuildFailed,
    InstanceNotFound,
    NotSupported,
    PauseSuspendDriver,
    PowerState,
    ResizeInPlaceDriver,
)

if TYPE_CHECKING:
    from nodeagent.agent import HostAgent

log = logging.getLogger(__name__)

STOP_SOURCE = "move_stop_source"
FINISH_DEST = "move_finish_dest"
DROP = "move_drop"
RESTORE_SOURCE = "move_restore_source"
VERBS = (STOP_SOURCE, FINISH_DEST, DROP, RESTORE_SOURCE)


def _in_place(agent: HostAgent) -> ResizeInPlaceDriver:
    if not isinstance(agent.driver, ResizeInPlaceDriver):
        raise NotSupported("This host's hypervisor cannot resize an instance in place.")
    return agent.driver


def _answer(
    agent: HostAgent,
    verb: str,
    cmd: agent_bus_pb2.MoveInstanceCommand,
    state: PowerState,
    fault: tuple[int, str] | None = None,
) -> agent_bus_pb2.InstanceEvent:
    event = m.instance_event(
        host=agent.host,
        instance_id=cmd.instance_id,
        kind=m.ACTION_FAILED if fault else m.ACTION_SUCCEEDED,
        power_state=state,
        request_id=cmd.request_id,
        action=verb,
        fault=m.fault(*fault) if fault else None,
    )
    event.migration_id = cmd.migration_id
    return event


async def execute(
    agent: HostAgent, verb: str, cmd: agent_bus_pb2.MoveInstanceCommand
) -> agent_bus_pb2.InstanceEvent:
    """Runs one move step under the caller's host lock."""
    iid = cmd.instance_id
    try:
        if verb == STOP_SOURCE:
            timeout = agent.cfg.shutdown_timeout
            state = await agent.call_driver(agent.driver.stop, iid, timeout)
            agent.note_power(iid, state)
            return _answer(agent, verb, cmd, state)
        if verb == FINISH_DEST and cmd.source_host == agent.host:
            # A resize that stays on this host: the kept domain takes the new flavor.
            state = await agent.call_driver(
                _in_place(agent).resize_in_place, cmd.spec, power_on=cmd.power_on
            )
            agent.note_power(iid, state)
            return _answer(agent, verb, cmd, state)
        if verb == FINISH_DEST and agent.driver.persistent and not cmd.from_image:
            # A real guest's disks would have to come from the source host; until they
            # can, the move is refused here and goes back to the source, which kept them.
            return _answer(
                agent,
                verb,
                cmd,
                PowerState.NOSTATE,
                (501, "This host cannot receive a moved guest's disks from another host."),
            )
        if verb == FINISH_DEST:
            agent.forget_deletion(iid)
            try:
                state = await agent.call_driver(
                    agent.driver.create, cmd.spec, power_on=cmd.power_on, dhcp=list(cmd.dhcp)
                )
            except BuildFailed as exc:
                agent.forget(iid)
                return _answer(agent, verb, cmd, PowerState.NOSTATE, (500, str(exc)))
            if cmd.paused:
                driver = agent.driver
                if not isinstance(driver, PauseSuspendDriver):
                    raise NotSupported("This host's hypervisor cannot pause instances.")
                state = await agent.call_driver(driver.pause, iid)
            agent.note_power(iid, state)
            return _answer(agent, verb, cmd, state)
        if verb == DROP:
            await agent.call_driver(agent.driver.destroy, iid)
            agent.note_deleted(iid)
            return _answer(agent, verb, cmd, PowerState.NOSTATE)
        # RESTORE_SOURCE
        if cmd.spec.instance_id:
            # A revert on the host it never left: the old flavor comes back.
            state = await agent.call_driver(
                _in_place(agent).resize_in_place, cmd.spec, power_on=cmd.power_on
            )
        elif cmd.power_on:
            state = await agent.call_driver(agent.driver.start, iid)
        else:
            state = await agent.call_driver(agent.driver.describe, iid)
        agent.note_power(iid, state)
        return _answer(agent, verb, cmd, state)
    except InstanceNotFound as exc:
        agent.forget(iid)
        return _answer(agent, verb, cmd, PowerState.NOSTATE, (404, str(exc)))
    except NotSupported as exc:
        return _answer(agent, verb, cmd, PowerState.NOSTATE, (501, str(exc)))
    except Exception:
        log.exception("%s failed", verb, extra={"host": agent.host, "instance": iid})
        return _answer(
            agent, verb, cmd, PowerState.NOSTATE, (500, f"The hypervisor could not {verb}.")
        )
