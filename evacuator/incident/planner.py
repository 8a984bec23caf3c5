"""Pure evacuation planning: which VMs move, by when, and which tenant is told about which VMs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from evacuator.hypervisor.model import VmInfo, VmState


@dataclass(frozen=True, slots=True, kw_only=True)
class WindowPolicy:
    default_window_seconds: int
    max_window_seconds: int
    # A failed host gives no window: the tenant is told the move already started (DESIGN.md, policy).
    immediate: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class PlannedMove:
    vm_uuid: str
    vm_name: str
    tenant: str | None
    window_seconds: int
    deadline: datetime
    return_to: str | None = None  # a move back: the one host it goes to


@dataclass(frozen=True, slots=True, kw_only=True)
class TenantNotice:
    tenant: str
    moves: tuple[PlannedMove, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    moves: tuple[PlannedMove, ...]
    notices: tuple[TenantNotice, ...]


def window_for(vm: VmInfo, policy: WindowPolicy) -> int:
    """The VM's registered window, or the default, never above the admin's cap."""
    if policy.immediate:
        return 0
    registered = vm.facts.window_seconds
    wanted = policy.default_window_seconds if registered is None else registered
    return max(0, min(wanted, policy.max_window_seconds))


def _movable(vm: VmInfo) -> bool:
    # Paused or crashed domains still hold tenant data on this host; only "other" states (e.g. being
    # migrated by someone else) are left alone.
    return vm.state is not VmState.OTHER


def plan_evacuation(vms: Sequence[VmInfo], policy: WindowPolicy, now: datetime,
                    returns: Mapping[str, str] | None = None) -> Plan:  # fmt: skip
    """Every movable VM gets a deadline; tenants are told about their own VMs only, in a stable order.
    With `returns` (VM uuid -> the host it goes back to), only those VMs move, each to its host."""
    moves = tuple(
        PlannedMove(
            vm_uuid=vm.uuid,
            vm_name=vm.name,
            tenant=vm.facts.tenant,
            window_seconds=window_for(vm, policy),
            deadline=now + timedelta(seconds=window_for(vm, policy)),
            return_to=None if returns is None else returns[vm.uuid],
        )
        for vm in sorted(vms, key=lambda v: (v.name, v.uuid))
        if _movable(vm) and (returns is None or vm.uuid in returns)
    )
    tenants = sorted({m.tenant for m in moves if m.tenant is not None})
    notices = tuple(TenantNotice(tenant=t, moves=tuple(m for m in moves if m.tenant == t)) for t in tenants)
    return Plan(moves=moves, notices=notices)
