"""placement: each rule of `plan` as a table, the checker shown able to fail, and random clouds it passes."""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evacuator.placement.check import ViolationKind, check
from evacuator.placement.model import HostState, Placement, PlacementPolicy, Reason, Room, Verdict, VmDemand
from evacuator.placement.place import plan

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
GIB = 1 << 30
POLICY = PlacementPolicy(stale_after_seconds=90)


def host(
    name: str,
    *,
    memory_gib: int = 64,
    vcpus: int = 32,
    disk_gib: int = 1000,
    used_gib: int = 0,
    used_vcpus: int = 0,
    verdict: Verdict = Verdict.HEALTHY,
    age_seconds: float = 5.0,
    quarantined: bool = False,
    maintenance: bool = False,
    accepting: bool = True,
    functions: frozenset[tuple[str, str]] = frozenset(),
) -> HostState:
    capacity = Room(memory_bytes=memory_gib * GIB, vcpus=vcpus, disk_bytes=disk_gib * GIB)
    return HostState(
        name=name,
        verdict=verdict,
        seen_at=NOW - timedelta(seconds=age_seconds),
        capacity=capacity,
        free=capacity - Room(memory_bytes=used_gib * GIB, vcpus=used_vcpus),
        quarantined=quarantined,
        maintenance=maintenance,
        accepting=accepting,
        functions=functions,
    )


def vm(
    uuid: str,
    *,
    memory_gib: int = 4,
    vcpus: int = 2,
    disk_gib: int = 20,
    source: str = "sick",
    tenant: str | None = "acme",
    group: str | None = None,
    function: str | None = None,
    priority: int = 0,
) -> VmDemand:
    return VmDemand(
        uuid=uuid,
        source=source,
        memory_bytes=memory_gib * GIB,
        vcpus=vcpus,
        disk_bytes=disk_gib * GIB,
        tenant=tenant,
        group=group,
        function=function,
        priority=priority,
    )


SICK = host("sick", verdict=Verdict.SEVERE)


def placed(
    hosts: Sequence[HostState], vms: Sequence[VmDemand], policy: PlacementPolicy = POLICY
) -> Placement:
    """`plan`, with the independent checker run on every result the tests look at."""
    result = plan([SICK, *hosts], vms, policy, NOW)
    assert check([SICK, *hosts], vms, policy, NOW, result) == []
    return result


def outcome(result: Placement) -> dict[str, str]:
    """Each VM's destination, or its reason prefixed with '!'."""
    return {**result.assignments, **{uuid: f"!{reason}" for uuid, reason in result.unplaced.items()}}


@pytest.mark.parametrize(
    "bad",
    [
        host("bad", memory_gib=512, age_seconds=90.5),
        host("bad", memory_gib=512, quarantined=True),
        host("bad", memory_gib=512, maintenance=True),
        host("bad", memory_gib=512, accepting=False),
        host("bad", memory_gib=512, verdict=Verdict.MODERATE),
        host("bad", memory_gib=512, verdict=Verdict.SEVERE),
        host("bad", memory_gib=512, verdict=Verdict.FAILED),
        host("bad", memory_gib=512, verdict=Verdict.UNKNOWN),
    ],
    ids=["stale", "quarantined", "maintenance", "not-accepting", "moderate", "severe", "failed", "unknown"],
)
def test_an_ineligible_host_is_never_chosen_however_free(bad: HostState) -> None:
    assert outcome(placed([bad, host("ok", memory_gib=8)], [vm("a")])) == {"a": "ok"}
    assert outcome(placed([bad], [vm("a")])) == {"a": "!no_healthy_host"}


def test_a_host_being_drained_in_the_same_plan_takes_nothing() -> None:
    draining = host("draining", memory_gib=512)
    result = placed([draining, host("ok", memory_gib=16)], [vm("a"), vm("b", source="draining")])
    assert outcome(result) == {"a": "ok", "b": "ok"}


@pytest.mark.parametrize(
    ("age_seconds", "fresh"),
    [(0.0, True), (90.0, True), (90.001, False), (3600.0, False), (-30.0, True)],
    ids=["just-heard", "at-the-limit", "just-past", "an-hour", "clock-ahead"],
)
def test_a_host_is_fresh_up_to_the_staleness_limit(age_seconds: float, fresh: bool) -> None:
    assert host("h", age_seconds=age_seconds).fresh(NOW, 90) is fresh
    assert outcome(placed([host("h", age_seconds=age_seconds)], [vm("a")])) == {
        "a": "h" if fresh else "!no_healthy_host"
    }


@pytest.mark.parametrize(
    ("policy", "demand", "expected"),
    [
        (PlacementPolicy(stale_after_seconds=90, reserve_fraction=0.25), vm("a", memory_gib=48), "h"),
        (
            PlacementPolicy(stale_after_seconds=90, reserve_fraction=0.25),
            vm("a", memory_gib=49),
            "!no_capacity",
        ),
        (
            PlacementPolicy(stale_after_seconds=90, reserve=Room(memory_bytes=16 * GIB)),
            vm("a", memory_gib=48),
            "h",
        ),
        (
            PlacementPolicy(stale_after_seconds=90, reserve=Room(memory_bytes=16 * GIB)),
            vm("a", memory_gib=49),
            "!no_capacity",
        ),
        (PlacementPolicy(stale_after_seconds=90, reserve=Room(vcpus=8)), vm("a", vcpus=25), "!no_capacity"),
        (PlacementPolicy(stale_after_seconds=90, reserve=Room(vcpus=8)), vm("a", vcpus=24), "h"),
        (
            PlacementPolicy(stale_after_seconds=90, reserve_fraction=0.5),
            vm("a", disk_gib=501),
            "!no_capacity",
        ),
        (POLICY, vm("a", memory_gib=64, vcpus=32, disk_gib=1000), "h"),
        (POLICY, vm("a", memory_gib=65), "!no_capacity"),
    ],
    ids=[
        "share-fits",
        "share-over",
        "bytes-fit",
        "bytes-over",
        "vcpus-over",
        "vcpus-fit",
        "disk-over",
        "no-reserve-exact",
        "no-reserve-over",
    ],
)
def test_the_reserve_stays_free(policy: PlacementPolicy, demand: VmDemand, expected: str) -> None:
    assert outcome(placed([host("h", memory_gib=64, vcpus=32, disk_gib=1000)], [demand], policy)) == {
        "a": expected
    }


@pytest.mark.parametrize(
    ("reserve", "fraction", "expected"),
    [
        (Room(), 0.0, Room()),
        (Room(memory_bytes=10), 0.0, Room(memory_bytes=10)),
        (Room(), 0.1, Room(memory_bytes=10, vcpus=2, disk_bytes=1)),  # rounded up, never down
        (Room(memory_bytes=50, disk_bytes=0), 0.1, Room(memory_bytes=50, vcpus=2, disk_bytes=1)),
    ],
    ids=["none", "bytes", "share-rounds-up", "larger-of-the-two"],
)
def test_a_hosts_reserve_is_the_larger_of_bytes_and_share(
    reserve: Room, fraction: float, expected: Room
) -> None:
    policy = PlacementPolicy(stale_after_seconds=90, reserve=reserve, reserve_fraction=fraction)
    assert policy.reserve_on(Room(memory_bytes=100, vcpus=11, disk_bytes=3)) == expected


@pytest.mark.parametrize(
    ("hosts", "vms", "expected"),
    [
        (
            [host("h1"), host("h2")],
            [vm("a"), vm("b"), vm("c"), vm("d")],
            {"a": "h1", "b": "h2", "c": "h1", "d": "h2"},
        ),
        ([host("h1", used_gib=32), host("h2", used_gib=8)], [vm("a")], {"a": "h2"}),
        ([host("h1", memory_gib=1024, used_vcpus=24), host("h2", used_gib=32)], [vm("a")], {"a": "h2"}),
        (
            [host("h1", used_gib=40), host("h2")],
            [vm("a", memory_gib=8), vm("b", memory_gib=8), vm("c", memory_gib=8)],
            {"a": "h2", "b": "h2", "c": "h2"},
        ),
    ],
    ids=["equal-hosts-alternate", "freer-host-first", "scarcest-resource-counts", "fill-until-level"],
)
def test_vms_spread_by_free_room(
    hosts: list[HostState], vms: list[VmDemand], expected: dict[str, str]
) -> None:
    assert outcome(placed(hosts, vms)) == expected


@pytest.mark.parametrize(
    ("hosts", "preferred", "expected"),
    [
        ([host("spare", used_gib=48), host("idle")], ("spare",), {"a": "spare", "b": "spare", "c": "idle"}),
        (
            [host("s1"), host("s2"), host("idle", memory_gib=512)],
            ("s1", "s2"),
            {"a": "s1", "b": "s2", "c": "s1"},
        ),
        ([host("s1", maintenance=True), host("idle")], ("s1",), {"a": "idle", "b": "idle", "c": "idle"}),
        ([host("idle")], ("gone",), {"a": "idle", "b": "idle", "c": "idle"}),
        ([host("s1"), host("s2")], ("s2", "s1"), {"a": "s2", "b": "s1", "c": "s2"}),
    ],
    ids=[
        "spare-first-until-full",
        "spread-among-spares",
        "ineligible-spare-skipped",
        "unknown-spare-ignored",
        "ties-by-list-order",
    ],
)
def test_preferred_hosts_are_tried_first(
    hosts: list[HostState], preferred: tuple[str, ...], expected: dict[str, str]
) -> None:
    policy = PlacementPolicy(stale_after_seconds=90, preferred=preferred)
    vms = [vm("a", memory_gib=8), vm("b", memory_gib=8), vm("c", memory_gib=8)]
    assert outcome(placed(hosts, vms, policy)) == expected


@pytest.mark.parametrize(
    ("hosts", "vms", "expected"),
    [
        (
            [host("h1", memory_gib=512), host("h2")],
            [vm("a", function="db"), vm("b", function="db")],
            {"a": "h1", "b": "h2"},
        ),
        ([host("h1")], [vm("a", function="db"), vm("b", function="db")], {"a": "h1", "b": "!anti_affinity"}),
        (
            [host("h1", memory_gib=512, functions=frozenset({("acme", "db")})), host("h2")],
            [vm("a", function="db")],
            {"a": "h2"},
        ),
        (
            [host("h1", functions=frozenset({("acme", "db")}))],
            [vm("a", function="db")],
            {"a": "!anti_affinity"},
        ),
        ([host("h1", functions=frozenset({("other", "db")}))], [vm("a", function="db")], {"a": "h1"}),
        (
            [host("h1")],
            [vm("a", function="db"), vm("b", tenant="bravo", function="db")],
            {"a": "h1", "b": "h1"},
        ),
        (
            [host("h1", functions=frozenset({("acme", "db")})), host("h2", memory_gib=4)],
            [vm("a", memory_gib=8, function="db")],
            {"a": "!anti_affinity"},
        ),
        (
            [host("h1", functions=frozenset({("acme", "db")}))],
            [vm("a", memory_gib=128, function="db")],
            {"a": "!no_capacity"},
        ),
        ([host("h1")], [vm("a", function="db"), vm("b", function="web")], {"a": "h1", "b": "h1"}),
    ],
    ids=[
        "replicas-apart",
        "second-replica-stays",
        "not-onto-a-running-replica",
        "only-host-runs-a-replica",
        "other-tenants-function-is-no-bar",
        "same-name-other-tenant",
        "room-only-where-a-replica-runs",
        "too-big-anyway-is-capacity",
        "different-functions-share",
    ],
)
def test_replicas_of_one_function_never_share_a_destination(
    hosts: list[HostState], vms: list[VmDemand], expected: dict[str, str]
) -> None:
    assert outcome(placed(hosts, vms)) == expected


@pytest.mark.parametrize(
    ("hosts", "vms", "expected"),
    [
        (
            [host("h1"), host("h2")],
            [vm("a", group="g"), vm("b", group="g"), vm("c", group="g")],
            {"a": "h1", "b": "h1", "c": "h1"},
        ),
        (
            [host("h1", memory_gib=16), host("h2", memory_gib=16)],
            [vm("a", memory_gib=10, group="g"), vm("b", memory_gib=10, group="g"), vm("c", memory_gib=10)],
            {"a": "!no_capacity", "b": "!no_capacity", "c": "h1"},
        ),
        (
            [host("h1"), host("h2")],
            [vm("a", group="g"), vm("b", group="g", source="sick2")],
            {"a": "h1", "b": "h2"},
        ),
        (
            [host("h1")],
            [vm("a", group="g", function="db"), vm("b", group="g", function="db")],
            {"a": "h1", "b": "h1"},
        ),
        (
            [host("h1", memory_gib=512, functions=frozenset({("acme", "db")})), host("h2")],
            [vm("a", group="g", function="db"), vm("b", group="g")],
            {"a": "h2", "b": "h2"},
        ),
        (
            [host("h1")],
            [vm("a", group="g", function="db"), vm("b", group="k", function="db")],
            {"a": "h1", "b": "!anti_affinity"},
        ),
    ],
    ids=[
        "whole-group-on-one-host",
        "too-big-together-none-moves",
        "same-name-other-source-is-another-group",
        "replicas-inside-a-group-stay-together",
        "group-avoids-a-running-replica",
        "two-groups-of-one-function-apart",
    ],
)
def test_a_group_goes_whole_to_one_destination_or_stays(
    hosts: list[HostState], vms: list[VmDemand], expected: dict[str, str]
) -> None:
    assert outcome(placed([*hosts, host("sick2", verdict=Verdict.FAILED)], vms)) == expected


@pytest.mark.parametrize(
    ("vms", "expected"),
    [
        (
            [vm("a", memory_gib=40, priority=0), vm("b", memory_gib=40, priority=10)],
            {"a": "!no_capacity", "b": "h"},
        ),
        (
            [vm("a", memory_gib=40, priority=10), vm("b", memory_gib=40, priority=-1)],
            {"a": "h", "b": "!no_capacity"},
        ),
        (
            [
                vm("a", memory_gib=20, group="g"),
                vm("b", memory_gib=20, group="g", priority=5),
                vm("c", memory_gib=60, priority=1),
            ],
            {"a": "h", "b": "h", "c": "!no_capacity"},
        ),
        (
            [vm("c", memory_gib=32), vm("b", memory_gib=32), vm("a", memory_gib=32)],
            {"a": "h", "b": "h", "c": "!no_capacity"},
        ),
        (
            [vm("a", memory_gib=8), vm("b", memory_gib=8), vm("c", memory_gib=8), vm("d", memory_gib=48)],
            {"a": "h", "b": "h", "c": "!no_capacity", "d": "h"},
        ),
    ],
    ids=[
        "higher-first",
        "negative-last",
        "group-takes-its-highest-priority",
        "equal-priority-first-by-uuid",
        "equal-priority-bigger-first",
    ],
)
def test_higher_priority_goes_first_when_room_runs_out(vms: list[VmDemand], expected: dict[str, str]) -> None:
    assert outcome(placed([host("h", memory_gib=64)], vms)) == expected


def test_reasons_are_stable_codes() -> None:
    assert {r.value for r in Reason} == {"no_healthy_host", "no_capacity", "anti_affinity"}


def test_the_result_does_not_depend_on_the_order_of_the_inputs() -> None:
    hosts = [SICK, *(host(f"h{i}", memory_gib=16 * (i % 3 + 1), used_gib=i) for i in range(8))]
    vms = [
        vm(
            f"v{i}",
            memory_gib=i % 5 + 1,
            group=f"g{i % 4}" if i % 3 == 0 else None,
            function=f"f{i % 2}" if i % 5 == 0 else None,
            priority=i % 2,
        )
        for i in range(30)
    ]
    expected = plan(hosts, vms, POLICY, NOW)
    rng = random.Random(7)
    for _ in range(5):
        rng.shuffle(hosts)
        rng.shuffle(vms)
        assert plan(hosts, vms, POLICY, NOW) == expected


@pytest.mark.parametrize(
    ("hosts", "vms", "match"),
    [
        ([host("h"), host("h")], [vm("a")], "host name 'h'"),
        ([host("h")], [vm("a"), vm("a")], "VM uuid 'a'"),
    ],
    ids=["duplicate-host", "duplicate-vm"],
)
def test_a_broken_view_is_refused(hosts: list[HostState], vms: list[VmDemand], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        plan(hosts, vms, POLICY, NOW)


# The checker must be able to fail: each bad placement below breaks exactly the rule its id names.
CHECKED_HOSTS = [
    SICK,
    host("h1", memory_gib=16, functions=frozenset({("acme", "web")})),
    host("h2", memory_gib=16),
    host("off", maintenance=True),
]
CHECKED_VMS = [
    vm("a", memory_gib=8, group="g"),
    vm("b", memory_gib=4, group="g"),
    vm("c", function="db"),
    vm("d", function="db"),
    vm("e", function="web"),
]
GOOD = {"a": "h1", "b": "h1", "c": "h2", "d": "h1", "e": "h2"}


def test_the_checked_example_is_good_as_given() -> None:
    assert check(CHECKED_HOSTS, CHECKED_VMS, POLICY, NOW, Placement(assignments=GOOD)) == []


@pytest.mark.parametrize(
    ("assignments", "unplaced", "kind"),
    [
        ({**GOOD, "c": "h1", "d": "h2", "e": "h1"}, {}, ViolationKind.OVER_ROOM),
        ({**GOOD, "d": "h2"}, {}, ViolationKind.ANTI_AFFINITY),
        ({**GOOD, "e": "h1"}, {}, ViolationKind.ANTI_AFFINITY),
        ({**GOOD, "c": "off"}, {}, ViolationKind.INELIGIBLE_DESTINATION),
        ({**GOOD, "c": "sick"}, {}, ViolationKind.INELIGIBLE_DESTINATION),
        ({**GOOD, "c": "nowhere"}, {}, ViolationKind.INELIGIBLE_DESTINATION),
        ({**GOOD, "b": "h2"}, {}, ViolationKind.GROUP_SPLIT),
        ({k: v for k, v in GOOD.items() if k != "b"}, {"b": Reason.NO_CAPACITY}, ViolationKind.GROUP_PARTIAL),
        ({}, dict.fromkeys(GOOD, Reason.NO_CAPACITY), ViolationKind.FITS_BUT_UNPLACED),
        (
            {k: v for k, v in GOOD.items() if k != "e"},
            {"e": Reason.ANTI_AFFINITY},
            ViolationKind.FITS_BUT_UNPLACED,
        ),
        ({k: v for k, v in GOOD.items() if k != "e"}, {}, ViolationKind.UNACCOUNTED),
        (GOOD, {"e": Reason.NO_CAPACITY}, ViolationKind.DOUBLE_ACCOUNTED),
        ({**GOOD, "z": "h2"}, {}, ViolationKind.UNKNOWN_VM),
        (
            {k: v for k, v in GOOD.items() if k != "e"},
            {"e": Reason.NO_HEALTHY_HOST},
            ViolationKind.WRONG_REASON,
        ),
    ],
    ids=[
        "over-room",
        "replicas-together",
        "onto-a-running-replica",
        "maintenance-host",
        "sick-source",
        "unknown-host",
        "split-group",
        "partial-group",
        "lazy-planner",
        "fits-but-left",
        "unaccounted",
        "double-accounted",
        "unknown-vm",
        "no-healthy-host-while-one-is-open",
    ],
)
def test_the_checker_catches_each_kind_of_violation(
    assignments: dict[str, str], unplaced: dict[str, Reason], kind: ViolationKind
) -> None:
    found = check(
        CHECKED_HOSTS, CHECKED_VMS, POLICY, NOW, Placement(assignments=assignments, unplaced=unplaced)
    )
    assert kind in {v.kind for v in found}


_HOST_NAMES = ("h0", "h1", "h2", "h3", "h4", "h5")
_hosts = st.builds(
    lambda name, memory_gib, vcpus, used_gib, verdict, age_seconds, flags, functions: host(
        name,
        memory_gib=memory_gib,
        vcpus=vcpus,
        disk_gib=200,
        used_gib=min(used_gib, memory_gib),
        verdict=verdict,
        age_seconds=age_seconds,
        quarantined=flags == 1,
        maintenance=flags == 2,
        accepting=flags != 3,
        functions=frozenset(functions),
    ),
    name=st.sampled_from(_HOST_NAMES),
    memory_gib=st.sampled_from([8, 16, 32, 64]),
    vcpus=st.sampled_from([4, 8, 16]),
    used_gib=st.integers(0, 64),
    verdict=st.sampled_from([Verdict.HEALTHY] * 4 + list(Verdict)),
    age_seconds=st.sampled_from([1.0, 300.0]),
    flags=st.sampled_from([0] * 6 + [1, 2, 3]),
    functions=st.sets(
        st.tuples(st.sampled_from(["acme", "bravo"]), st.sampled_from(["f1", "f2"])), max_size=2
    ),
)
# (memory GiB, vCPUs, disk GiB, source, tenant, group, function, priority)
_vms = st.tuples(
    st.sampled_from([1, 2, 4, 8, 16]),
    st.integers(1, 8),
    st.sampled_from([10, 50, 150]),
    st.sampled_from(["h0", "h1", "gone"]),
    st.sampled_from(["acme", "bravo", None]),
    st.sampled_from([None, None, "g1", "g2"]),
    st.sampled_from([None, None, "f1", "f2"]),
    st.integers(-1, 2),
)


@settings(max_examples=400, deadline=None)
@given(
    hosts=st.lists(_hosts, max_size=6, unique_by=lambda h: h.name),
    shapes=st.lists(_vms, max_size=12),
    reserve_fraction=st.sampled_from([0.0, 0.1, 0.3]),
)
def test_random_small_clouds_are_planned_within_every_rule(
    hosts: list[HostState],
    shapes: list[tuple[int, int, int, str, str | None, str | None, str | None, int]],
    reserve_fraction: float,
) -> None:
    vms = [
        vm(f"v{i}", memory_gib=m, vcpus=c, disk_gib=d, source=s, tenant=t, group=g, function=f, priority=p)
        for i, (m, c, d, s, t, g, f, p) in enumerate(shapes)
    ]
    policy = PlacementPolicy(stale_after_seconds=90, reserve_fraction=reserve_fraction, preferred=("h3",))
    result = plan(hosts, vms, policy, NOW)
    assert check(hosts, vms, policy, NOW, result) == []
    assert plan(hosts[::-1], vms[::-1], policy, NOW) == result
