"""Checks any placement against the rules, independently of the planner: what it breaks, as violations.

Written apart from place.py on purpose (it shares only the model's values and the policy's reserve rule), so
a bug in the planner is not repeated here. Besides the hard rules it asks whether anything left behind would
have fitted in the end: a planner that places nothing fails it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from evacuator.placement.model import (
    ZERO_ROOM,
    FunctionKey,
    HostState,
    Placement,
    PlacementPolicy,
    Reason,
    Room,
    Verdict,
    VmDemand,
)


class ViolationKind(StrEnum):
    UNACCOUNTED = "unaccounted"  # a VM neither assigned nor unplaced
    DOUBLE_ACCOUNTED = "double_accounted"  # a VM both assigned and unplaced
    UNKNOWN_VM = "unknown_vm"  # the result names a VM it was not asked about
    INELIGIBLE_DESTINATION = "ineligible_destination"
    OVER_ROOM = "over_room"  # a destination given more than its room above the reserve
    ANTI_AFFINITY = "anti_affinity"
    GROUP_SPLIT = "group_split"  # one group's members on different destinations
    GROUP_PARTIAL = "group_partial"  # some of a group's members placed, others not
    FITS_BUT_UNPLACED = "fits_but_unplaced"
    # `no_healthy_host` said while some host was open, or another reason while none was. (Which of
    # `no_capacity` and `anti_affinity` held when the planner decided cannot be told from the end state.)
    WRONG_REASON = "wrong_reason"


@dataclass(frozen=True, slots=True, kw_only=True)
class Violation:
    kind: ViolationKind
    vm_uuids: tuple[str, ...]
    host: str | None
    detail: str


def check(
    hosts: Sequence[HostState],
    vms: Sequence[VmDemand],
    policy: PlacementPolicy,
    now: datetime,
    placement: Placement,
) -> list[Violation]:
    """Every rule `placement` breaks for these inputs; an empty list means it keeps them all."""
    by_uuid = {vm.uuid: vm for vm in vms}
    by_name = {host.name: host for host in hosts}
    sources = {vm.source for vm in vms}
    found = _accounting(by_uuid, placement)
    assigned = {uuid: host for uuid, host in placement.assignments.items() if uuid in by_uuid}
    on_host: dict[str, list[VmDemand]] = defaultdict(list)
    for uuid, name in assigned.items():
        on_host[name].append(by_uuid[uuid])
    for name in sorted(on_host):
        uuids = tuple(sorted(vm.uuid for vm in on_host[name]))
        host = by_name.get(name)
        why = "is not in the host view" if host is None else _ineligible_because(host, sources, policy, now)
        if why is not None:
            found.append(
                Violation(kind=ViolationKind.INELIGIBLE_DESTINATION, vm_uuids=uuids, host=name, detail=why)
            )
        if host is not None:
            found.extend(_room_and_affinity(host, on_host[name], policy))
    found.extend(_groups(vms, assigned, placement.unplaced))
    found.extend(_fits_but_unplaced(hosts, vms, on_host, placement.unplaced, policy, now))
    any_open = any(_ineligible_because(h, sources, policy, now) is None for h in hosts)
    for uuid in sorted(u for u in placement.unplaced if u in by_uuid):
        if (placement.unplaced[uuid] is Reason.NO_HEALTHY_HOST) == any_open:
            found.append(
                Violation(
                    kind=ViolationKind.WRONG_REASON,
                    vm_uuids=(uuid,),
                    host=None,
                    detail=f"{placement.unplaced[uuid]} while hosts open: {any_open}",
                )
            )
    return found


def _accounting(by_uuid: Mapping[str, VmDemand], placement: Placement) -> list[Violation]:
    found: list[Violation] = []
    for uuid in sorted(by_uuid):
        is_assigned, is_unplaced = uuid in placement.assignments, uuid in placement.unplaced
        if is_assigned and is_unplaced:
            found.append(
                Violation(
                    kind=ViolationKind.DOUBLE_ACCOUNTED,
                    vm_uuids=(uuid,),
                    host=None,
                    detail="both assigned and unplaced",
                )
            )
        elif not is_assigned and not is_unplaced:
            found.append(
                Violation(
                    kind=ViolationKind.UNACCOUNTED,
                    vm_uuids=(uuid,),
                    host=None,
                    detail="neither assigned nor unplaced",
                )
            )
    for uuid in sorted(set(placement.assignments) | set(placement.unplaced)):
        if uuid not in by_uuid:
            found.append(
                Violation(
                    kind=ViolationKind.UNKNOWN_VM,
                    vm_uuids=(uuid,),
                    host=None,
                    detail="not among the VMs to move",
                )
            )
    return found


def _ineligible_because(
    host: HostState, sources: set[str], policy: PlacementPolicy, now: datetime
) -> str | None:
    age_seconds = (now - host.seen_at).total_seconds()
    reasons = [
        (host.verdict != Verdict.HEALTHY, f"its verdict is {host.verdict.value}"),
        (age_seconds > policy.stale_after_seconds, f"last heard from {age_seconds:.0f} s ago"),
        (host.quarantined, "it is quarantined"),
        (host.maintenance, "it is in maintenance"),
        (not host.accepting, "it does not accept VMs"),
        (host.name in sources, "VMs are leaving it in this plan"),
    ]
    return next((text for broken, text in reasons if broken), None)


def _room_left(host: HostState, policy: PlacementPolicy, landing: Sequence[VmDemand]) -> Room:
    total = ZERO_ROOM
    for vm in landing:
        total = total + vm.room
    return host.free - policy.reserve_on(host.capacity) - total


def _owner(vm: VmDemand) -> tuple[str, ...]:
    # Members of one group may share a function on their destination (place.py says why); nobody else may.
    key = vm.group_key
    return ("vm", vm.uuid) if key is None else ("group", *key)


def _room_and_affinity(
    host: HostState, landing: Sequence[VmDemand], policy: PlacementPolicy
) -> list[Violation]:
    found: list[Violation] = []
    uuids = tuple(sorted(vm.uuid for vm in landing))
    left = _room_left(host, policy, landing)
    if not ZERO_ROOM.fits_in(left):
        found.append(
            Violation(
                kind=ViolationKind.OVER_ROOM,
                vm_uuids=uuids,
                host=host.name,
                detail=f"{left!r} left after the reserve",
            )
        )
    owners: dict[FunctionKey, set[tuple[str, ...]]] = defaultdict(set)
    members: dict[FunctionKey, list[str]] = defaultdict(list)
    for vm in landing:
        if vm.function_key is not None:
            owners[vm.function_key].add(_owner(vm))
            members[vm.function_key].append(vm.uuid)
    for key in sorted(owners):
        if key in host.functions or len(owners[key]) > 1:
            where = "already runs there" if key in host.functions else "lands there more than once"
            found.append(
                Violation(
                    kind=ViolationKind.ANTI_AFFINITY,
                    vm_uuids=tuple(sorted(members[key])),
                    host=host.name,
                    detail=f"function {key!r} {where}",
                )
            )
    return found


def _functions_of(vms: Sequence[VmDemand]) -> set[FunctionKey]:
    return {key for vm in vms if (key := vm.function_key) is not None}


def _groups(
    vms: Sequence[VmDemand], assigned: Mapping[str, str], unplaced: Mapping[str, object]
) -> list[Violation]:
    found: list[Violation] = []
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for vm in vms:
        if vm.group is not None:
            groups[(vm.source, vm.group)].append(vm.uuid)
    for key in sorted(groups):
        uuids = tuple(sorted(groups[key]))
        destinations = {assigned[u] for u in uuids if u in assigned}
        if len(destinations) > 1:
            found.append(
                Violation(
                    kind=ViolationKind.GROUP_SPLIT,
                    vm_uuids=uuids,
                    host=None,
                    detail=f"group {key!r} sent to {sorted(destinations)}",
                )
            )
        if destinations and any(u in unplaced for u in uuids):
            found.append(
                Violation(
                    kind=ViolationKind.GROUP_PARTIAL,
                    vm_uuids=uuids,
                    host=None,
                    detail=f"group {key!r} partly left on its source",
                )
            )
    return found


def _fits_but_unplaced(
    hosts: Sequence[HostState],
    vms: Sequence[VmDemand],
    on_host: Mapping[str, list[VmDemand]],
    unplaced: Mapping[str, object],
    policy: PlacementPolicy,
    now: datetime,
) -> list[Violation]:
    """Each wholly unplaced VM or group, tried against every eligible host's final room and functions."""
    sources = {vm.source for vm in vms}
    open_hosts = [h for h in hosts if _ineligible_because(h, sources, policy, now) is None]
    left = {h.name: _room_left(h, policy, on_host.get(h.name, [])) for h in open_hosts}
    functions = {h.name: set(h.functions) | _functions_of(on_host.get(h.name, [])) for h in open_hosts}
    units: dict[tuple[str, ...], list[VmDemand]] = defaultdict(list)
    for vm in vms:
        units[_owner(vm)].append(vm)
    found: list[Violation] = []
    for owner in sorted(units):
        members = units[owner]
        if not all(vm.uuid in unplaced for vm in members):
            continue
        need = ZERO_ROOM
        for vm in members:
            need = need + vm.room
        wanted = _functions_of(members)
        for host in open_hosts:
            if need.fits_in(left[host.name]) and not wanted & functions[host.name]:
                found.append(
                    Violation(
                        kind=ViolationKind.FITS_BUT_UNPLACED,
                        vm_uuids=tuple(sorted(vm.uuid for vm in members)),
                        host=host.name,
                        detail="left on its source though this host has room and no replica",
                    )
                )
                break
    return found
