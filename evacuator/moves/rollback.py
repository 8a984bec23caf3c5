"""Undoes a failed move: removes what reached the destination; restarts the VM on its source if allowed."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import structlog

from evacuator.errors import EvacuatorError
from evacuator.hypervisor.model import Hypervisor, VmInfo, is_active
from evacuator.moves.state import MoveState

log = structlog.get_logger(__name__)

# Before this state the destination never started the VM, so a destination we cannot reach runs no copy.
_DESTINATION_NEVER_STARTED = frozenset({
    MoveState.PLANNED, MoveState.NOTIFIED, MoveState.WAITING, MoveState.QUIESCING, MoveState.COPYING,
    MoveState.DEFINING,
})


class RollbackOutcome(StrEnum):
    """How a rollback ended."""

    # The source holds the VM (definition and disks); the destination holds nothing of it.
    ON_SOURCE = "on_source"
    # As ON_SOURCE, but the destination could not be cleaned (unreachable): its partial copy is left there.
    ON_SOURCE_LEFTOVERS = "on_source_leftovers"
    # The source no longer holds the whole VM: the destination's copy is the only one and is kept.
    FORWARD_ONLY = "forward_only"


@dataclass(frozen=True, slots=True, kw_only=True)
class Rollback:
    outcome: RollbackOutcome
    running_on_source: bool
    detail: str


def roll_back(
    vm_uuid: str,
    *,
    source: Hypervisor,
    destination: Hypervisor,
    reached: MoveState,
    restart_on_source: bool,
) -> Rollback:
    """Idempotent: each part re-reads both hosts first. Never removes the last copy, never starts a second."""
    src = source.find_vm(vm_uuid)
    if reached is MoveState.CLEANING:
        detail = f"the copy on {destination.name} was verified: finishing the move, not undoing it"
        return Rollback(outcome=RollbackOutcome.FORWARD_ONLY, running_on_source=False, detail=detail)
    if src is None or any(source.find_volume(ref.pool, ref.volume) is None for ref in src.volumes):
        detail = f"{source.name} no longer holds the whole VM: keeping {destination.name}'s copy"
        return Rollback(outcome=RollbackOutcome.FORWARD_ONLY, running_on_source=False, detail=detail)
    leftovers = _clean_destination(vm_uuid, src, destination)
    if leftovers and reached not in _DESTINATION_NEVER_STARTED:
        # The destination may run a copy we cannot see: starting the source too could make two.
        return Rollback(outcome=RollbackOutcome.ON_SOURCE_LEFTOVERS, running_on_source=False,
                        detail=leftovers)
    running = is_active(src)
    if restart_on_source and not running:
        source.start_vm(vm_uuid)
        running = True
        log.info("vm_restarted_on_source", vm_uuid=vm_uuid, host=source.name)
    outcome = RollbackOutcome.ON_SOURCE_LEFTOVERS if leftovers else RollbackOutcome.ON_SOURCE
    return Rollback(outcome=outcome, running_on_source=running, detail=leftovers)


def _clean_destination(vm_uuid: str, src: VmInfo, destination: Hypervisor) -> str:
    """Removes the destination's definition and copies of the VM's volumes; returns what could not be."""
    try:
        dst = destination.find_vm(vm_uuid)
        if is_active(dst):
            destination.destroy_vm(vm_uuid)
        if dst is not None:
            destination.undefine_vm(vm_uuid)
        in_use = {ref for vm in destination.list_vms() for ref in vm.volumes}
        for ref in src.volumes:
            if ref not in in_use and destination.find_volume(ref.pool, ref.volume) is not None:
                destination.delete_volume(ref.pool, ref.volume)
    except EvacuatorError as exc:
        log.warning("destination_cleanup_failed", vm_uuid=vm_uuid, host=destination.name, error=str(exc))
        return f"{destination.name} could not be cleaned: {exc}"
    return ""
