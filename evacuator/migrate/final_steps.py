"""The last two steps of every move, cold or live: verify the VM on the destination, then clean the source."""

from __future__ import annotations

from evacuator.hypervisor.model import Hypervisor, VmState, is_active
from evacuator.migrate.steps import MoveAttempt, StepRefused

# What must be equal on both hosts once the VM is on the destination: identity, NICs, disks, its own facts.
_SAME_ON_BOTH = ("name", "macs", "volumes", "facts")


def verify_destination(source: Hypervisor, destination: Hypervisor, move: MoveAttempt) -> bool:
    """The VM is defined on the destination (running, when it ran before), as the source defines it, with
    every volume present."""
    dst = destination.find_vm(move.uuid)
    if dst is None:
        raise StepRefused(f"is not defined on {destination.name}")
    if move.run_after and dst.state is not VmState.RUNNING:
        raise StepRefused(f"is {dst.state} on {destination.name}, expected running")
    src = source.find_vm(move.uuid)
    if src is not None:
        for attr in _SAME_ON_BOTH:
            if getattr(src, attr) != getattr(dst, attr):
                raise StepRefused(f"{attr} differs: {getattr(src, attr)!r} on {source.name}, "
                                  f"{getattr(dst, attr)!r} on {destination.name}")
    for ref in dst.volumes:
        if destination.find_volume(ref.pool, ref.volume) is None:
            raise StepRefused(f"volume {ref.pool}/{ref.volume} missing on destination")
    return True


def clean_up_source(source: Hypervisor, destination: Hypervisor, move: MoveAttempt) -> bool:
    """Undefines the VM on the source and deletes the source's copies of its volumes, only once the
    destination defines it; False when nothing is left to clean."""
    dst = destination.find_vm(move.uuid)
    src = source.find_vm(move.uuid)
    if dst is None:
        raise StepRefused(f"is not defined on {destination.name}: keeping the source")
    leftovers = [ref for ref in dst.volumes if source.find_volume(ref.pool, ref.volume) is not None]
    if src is None and not leftovers:
        return False
    if src is not None:
        if is_active(src):
            raise StepRefused(f"runs on {source.name}: not undefining it")
        source.undefine_vm(move.uuid)
    for ref in leftovers:
        source.delete_volume(ref.pool, ref.volume)
    return True
