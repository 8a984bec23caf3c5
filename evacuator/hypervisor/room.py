"""What a host offers guests (its room), the seam that reads it, and the pure arithmetic from the hypervisor's
raw numbers and the admin's caps to the room a host publishes to its peers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

# (tenant or "", function): as placement keys a function (VmFacts.function, in the VM's metadata).
FunctionKey = tuple[str, str]


@dataclass(frozen=True, slots=True, kw_only=True)
class RoomCaps:
    """The admin's caps on what the host offers guests: hosts keep memory for themselves, and lab hosts
    share one machine. None: what the hypervisor reports. A cap above the hardware overcommits."""

    guest_memory_bytes: int | None = None
    guest_vcpus: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ActiveVm:
    """A VM holding resources on the host now (running, paused, anything but shut off)."""

    memory_bytes: int
    vcpus: int
    function: FunctionKey | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeReading:
    """The hypervisor's own numbers, read at one moment."""

    memory_bytes: int
    cpus: int
    active: Sequence[ActiveVm]
    pool_capacity_bytes: int
    pool_allocation_bytes: int
    pool_available_bytes: int


@dataclass(frozen=True, slots=True, kw_only=True)
class HostRoom:
    """What the host offers guests and what of it is free. Free memory and vCPUs are the capacity minus what
    the active VMs were given (negative: overcommitted); the pool's free space is its available bytes."""

    memory_capacity_bytes: int
    memory_free_bytes: int
    vcpus_capacity: int
    vcpus_free: int
    pool_capacity_bytes: int
    pool_allocation_bytes: int
    pool_available_bytes: int
    running_vms: int
    functions: frozenset[FunctionKey] = frozenset()


class RoomReader(Protocol):
    """Reads this host's room now; every failure raises HypervisorError."""

    def read_room(self) -> HostRoom: ...


def room_of(reading: NodeReading, caps: RoomCaps) -> HostRoom:
    """The room a host offers: its capacity is the cap, or the hardware's without one; what its active VMs
    were given is taken off, whatever they use now (a ballooned guest may grow back to its size)."""
    memory = reading.memory_bytes if caps.guest_memory_bytes is None else caps.guest_memory_bytes
    vcpus = reading.cpus if caps.guest_vcpus is None else caps.guest_vcpus
    return HostRoom(
        memory_capacity_bytes=memory,
        memory_free_bytes=memory - sum(vm.memory_bytes for vm in reading.active),
        vcpus_capacity=vcpus,
        vcpus_free=vcpus - sum(vm.vcpus for vm in reading.active),
        pool_capacity_bytes=reading.pool_capacity_bytes,
        pool_allocation_bytes=reading.pool_allocation_bytes,
        pool_available_bytes=reading.pool_available_bytes,
        running_vms=len(reading.active),
        functions=frozenset(vm.function for vm in reading.active if vm.function is not None),
    )
