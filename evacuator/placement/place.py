"""Chooses a destination for each VM to move, or the reason it stays: pure and deterministic.

The rules, in the order they bind:
- Eligible destinations: healthy, fresh (heard from within `stale_after_seconds`), not quarantined, not in
  maintenance, accepting VMs, and not a source of this plan (a host being emptied takes nothing: moving VMs
  onto a host about to be drained is what users of other evacuators complain of).
- Room: a destination keeps the policy's reserve free on memory, vCPUs and disk after everything it is given.
- A unit is one VM, or one consistency group: every VM with the same group name on the same source. A group
  goes to ONE destination, all of it or none of it, because the mover moves it as one (moves/groups.py).
- Function anti-affinity: a unit never goes to a host that already runs a VM of one of its functions, nor
  to one that this plan gives another unit of one of them. Within one group it does not apply: the members
  already share their source host, so moving them together adds no shared fate they did not have, and
  refusing would leave the whole group on a sick host.
- Order: higher priority first (a group counts with its highest member's), then bigger first (the
  big ones are the hard ones to fit), then by VM uuid.
- Choice: the admin's preferred hosts first, then the rest; within each, the host with the most headroom
  (the smallest free share, after the reserve, of its three resources), so VMs spread instead of piling onto
  one host while others idle; ties by position in `preferred`, then by name.
A unit that fits nowhere stays with `Reason.NO_HEALTHY_HOST`, `ANTI_AFFINITY` or `NO_CAPACITY` (model.py).
Room freed on a source by its leaving VMs is not counted: both copies exist until a move ends.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from evacuator.placement.model import (
    FunctionKey,
    HostState,
    Placement,
    PlacementPolicy,
    Reason,
    Verdict,
    VmDemand,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Unit:
    """What is placed as one: a single VM, or every member of a consistency group."""

    members: tuple[str, ...]
    memory_bytes: int
    vcpus: int
    disk_bytes: int
    functions: frozenset[FunctionKey]
    priority: int


# One candidate host, in the board's order: (tier, -headroom, preferred position, name, memory, vcpus, disk
# left after the reserve). The name is unique, so ordering never compares what follows it.
_Entry = tuple[int, float, int, str, int, int, int]


def plan(
    hosts: Sequence[HostState], vms: Sequence[VmDemand], policy: PlacementPolicy, now: datetime
) -> Placement:
    """Places every VM in `vms` (several sources may be planned at once) on `hosts` under `policy`.

    The result does not depend on the order of either input. Raises ValueError on duplicate host names or
    VM uuids: the caller's view is broken, and a guess would place VMs by it.
    """
    _require_unique((h.name for h in hosts), "host name")
    _require_unique((vm.uuid for vm in vms), "VM uuid")
    sources = {vm.source for vm in vms}
    board = _Board([h for h in hosts if _eligible(h, sources, policy, now)], policy)
    assignments: dict[str, str] = {}
    unplaced: dict[str, Reason] = {}
    for unit in _units(vms):
        outcome = board.take(unit)
        for uuid in unit.members:
            if isinstance(outcome, Reason):
                unplaced[uuid] = outcome
            else:
                assignments[uuid] = outcome
    return Placement(assignments=dict(sorted(assignments.items())), unplaced=dict(sorted(unplaced.items())))


def _require_unique(names: Iterable[str], what: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"placement: {what} {name!r} appears more than once")
        seen.add(name)


def _eligible(host: HostState, sources: set[str], policy: PlacementPolicy, now: datetime) -> bool:
    return (
        host.verdict is Verdict.HEALTHY
        and host.fresh(now, policy.stale_after_seconds)
        and not host.quarantined
        and not host.maintenance
        and host.accepting
        and host.name not in sources
    )


def _units(vms: Sequence[VmDemand]) -> list[_Unit]:
    groups: dict[tuple[str, str], list[VmDemand]] = {}
    units: list[_Unit] = []
    for vm in vms:
        key = vm.group_key
        if key is None:
            units.append(_unit_of([vm]))
        else:
            groups.setdefault(key, []).append(vm)
    units.extend(_unit_of(members) for members in groups.values())
    units.sort(key=lambda u: (-u.priority, -u.memory_bytes, -u.vcpus, -u.disk_bytes, u.members[0]))
    return units


def _unit_of(members: Sequence[VmDemand]) -> _Unit:
    return _Unit(
        members=tuple(sorted(vm.uuid for vm in members)),
        memory_bytes=sum(vm.memory_bytes for vm in members),
        vcpus=sum(vm.vcpus for vm in members),
        disk_bytes=sum(vm.disk_bytes for vm in members),
        functions=frozenset(key for vm in members if (key := vm.function_key) is not None),
        priority=max(vm.priority for vm in members),
    )


class _Board:
    """The eligible hosts, kept sorted by preference and headroom, with what is left on each as units land.

    A sorted list rather than a heap: a unit that fits nowhere is answered by one pass over plain tuples,
    with no popping and pushing back, and the host that takes a unit moves by one bisect and one memmove.
    """

    def __init__(self, hosts: Sequence[HostState], policy: PlacementPolicy) -> None:
        preferred: dict[str, int] = {}
        for index, name in enumerate(policy.preferred):
            preferred.setdefault(name, index)
        self._capacity: dict[str, tuple[int, int, int]] = {}
        self._functions: dict[str, set[FunctionKey]] = {}
        self._tier: dict[str, tuple[int, int]] = {}
        self._order: list[_Entry] = []
        for host in hosts:
            reserve = policy.reserve_on(host.capacity)
            left = host.free - reserve
            self._capacity[host.name] = (
                host.capacity.memory_bytes,
                host.capacity.vcpus,
                host.capacity.disk_bytes,
            )
            self._functions[host.name] = set(host.functions)
            position = preferred.get(host.name)
            self._tier[host.name] = (1, 0) if position is None else (0, position)
            self._order.append(self._entry(host.name, left.memory_bytes, left.vcpus, left.disk_bytes))
        self._order.sort()

    def take(self, unit: _Unit) -> str | Reason:
        """The destination given to the unit (its room and functions now booked there), or why none."""
        if not self._order:
            return Reason.NO_HEALTHY_HOST
        memory, vcpus, disk = unit.memory_bytes, unit.vcpus, unit.disk_bytes
        blocked = False
        for index, entry in enumerate(self._order):
            if memory <= entry[4] and vcpus <= entry[5] and disk <= entry[6]:
                name = entry[3]
                if unit.functions and not unit.functions.isdisjoint(self._functions[name]):
                    blocked = True
                    continue
                self._book(index, entry, unit)
                return name
        return Reason.ANTI_AFFINITY if blocked else Reason.NO_CAPACITY

    def _book(self, index: int, entry: _Entry, unit: _Unit) -> None:
        name = entry[3]
        del self._order[index]
        self._functions[name].update(unit.functions)
        left = (entry[4] - unit.memory_bytes, entry[5] - unit.vcpus, entry[6] - unit.disk_bytes)
        bisect.insort(self._order, self._entry(name, *left))

    def _entry(self, name: str, memory: int, vcpus: int, disk: int) -> _Entry:
        tier, position = self._tier[name]
        return (
            tier,
            -_headroom(self._capacity[name], (memory, vcpus, disk)),
            position,
            name,
            memory,
            vcpus,
            disk,
        )


def _headroom(capacity: tuple[int, int, int], left: tuple[int, int, int]) -> float:
    """The scarcest resource's free share; a resource the host offers none of does not count."""
    shares = [free / total for free, total in zip(left, capacity, strict=True) if total > 0]
    return min(shares, default=0.0)
