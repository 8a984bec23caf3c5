"""The pure planner: windows, caps, deadlines and which tenant hears about which VM."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from evacuator.hypervisor.facts import VmFacts
from evacuator.hypervisor.model import VmInfo, VmState
from evacuator.incident.planner import WindowPolicy, plan_evacuation, window_for

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
POLICY = WindowPolicy(default_window_seconds=600, max_window_seconds=3600)


def vm(
    name: str, tenant: str | None = "acme", window: int | None = None, state: VmState = VmState.RUNNING
) -> VmInfo:
    return VmInfo(
        uuid=f"00000000-0000-4000-8000-{abs(hash(name)) % 10**12:012d}",
        name=name,
        state=state,
        macs=(),
        volumes=(),
        facts=VmFacts(tenant=tenant, window_seconds=window),
    )


@pytest.mark.parametrize(
    ("registered", "policy", "expected"),
    [
        (None, POLICY, 600),
        (120, POLICY, 120),
        (0, POLICY, 0),
        (7200, POLICY, 3600),
        (120, WindowPolicy(default_window_seconds=600, max_window_seconds=3600, immediate=True), 0),
    ],
)
def test_window_is_registered_or_default_and_never_above_the_cap(
    registered: int | None, policy: WindowPolicy, expected: int
) -> None:
    assert window_for(vm("a", window=registered), policy) == expected


def test_each_tenant_is_told_only_about_its_own_vms() -> None:
    plan = plan_evacuation(
        [vm("b1", "beta"), vm("a1", "acme", 60), vm("a2", "acme"), vm("orphan", None)], POLICY, NOW
    )
    assert [m.vm_name for m in plan.moves] == ["a1", "a2", "b1", "orphan"]
    assert [(n.tenant, [m.vm_name for m in n.moves]) for n in plan.notices] == [
        ("acme", ["a1", "a2"]),
        ("beta", ["b1"]),
    ]
    deadlines = {m.vm_name: m.deadline for m in plan.moves}
    assert deadlines["a1"] == NOW + timedelta(seconds=60)
    assert deadlines["a2"] == NOW + timedelta(seconds=600)


def test_stopped_vms_move_too_but_foreign_states_are_left_alone() -> None:
    plan = plan_evacuation([vm("off", state=VmState.SHUT_OFF), vm("odd", state=VmState.OTHER)], POLICY, NOW)
    assert [m.vm_name for m in plan.moves] == ["off"]


def test_no_vms_means_an_empty_plan() -> None:
    plan = plan_evacuation([], POLICY, NOW)
    assert plan.moves == () and plan.notices == ()
