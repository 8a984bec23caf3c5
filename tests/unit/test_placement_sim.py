"""placement at cloud scale: simulated clouds are consistent, and planning their sick hosts breaks no rule."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import UTC, datetime

import pytest

from evacuator.placement.check import check
from evacuator.placement.model import PlacementPolicy, Room, Verdict, VmDemand
from evacuator.placement.place import plan
from evacuator.placement.simulate import simulate_cloud

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_simulated_clouds_room_is_what_its_vms_leave(seed: int) -> None:
    cloud = simulate_cloud(hosts=100, vms=2000, sick_share=0.03, seed=seed, now=NOW, spares=2)
    on_host: dict[str, list[VmDemand]] = defaultdict(list)
    for vm in cloud.running:
        on_host[vm.source].append(vm)
    for host in cloud.hosts:
        used = Room()
        for vm in on_host[host.name]:
            used = used + vm.room
        assert host.capacity - host.free == used
        assert host.free.is_non_negative()
        assert host.functions == {vm.function_key for vm in on_host[host.name] if vm.function_key is not None}
    assert len(cloud.running) == 2000
    assert len({vm.uuid for vm in cloud.running}) == len(cloud.running)
    assert len(cloud.sick) == 3
    assert set(cloud.moving) == {vm for vm in cloud.running if vm.source in cloud.sick}
    assert {h.name for h in cloud.hosts if h.verdict in (Verdict.SEVERE, Verdict.FAILED)} == set(cloud.sick)
    assert all(not on_host[name] for name in cloud.spares)
    # Replicas of one function run on distinct hosts, as the cloud placed them.
    replicas = Counter((vm.source, vm.function_key) for vm in cloud.running if vm.function_key is not None)
    assert max(replicas.values()) == 1


def test_the_same_seed_is_the_same_cloud() -> None:
    first = simulate_cloud(hosts=50, vms=500, sick_share=0.1, seed=9, now=NOW)
    assert simulate_cloud(hosts=50, vms=500, sick_share=0.1, seed=9, now=NOW) == first
    assert simulate_cloud(hosts=50, vms=500, sick_share=0.1, seed=10, now=NOW) != first


@pytest.mark.parametrize(
    ("seed", "sick_share", "reserve_fraction"),
    [(1, 0.03, 0.05), (2, 0.03, 0.05), (3, 0.1, 0.1), (4, 0.5, 0.2)],
    ids=["3pct-a", "3pct-b", "10pct", "half-sick-room-runs-out"],
)
def test_planning_a_100_host_cloud_breaks_no_rule(
    seed: int, sick_share: float, reserve_fraction: float
) -> None:
    cloud = simulate_cloud(hosts=100, vms=2000, sick_share=sick_share, seed=seed, now=NOW, spares=2)
    policy = PlacementPolicy(
        stale_after_seconds=90, reserve_fraction=reserve_fraction, preferred=cloud.spares
    )
    result = plan(cloud.hosts, cloud.moving, policy, NOW)
    assert check(cloud.hosts, cloud.moving, policy, NOW, result) == []
    assert set(result.assignments) | set(result.unplaced) == {vm.uuid for vm in cloud.moving}
    if sick_share <= 0.1:
        assert len(result.assignments) >= 0.95 * len(cloud.moving)
