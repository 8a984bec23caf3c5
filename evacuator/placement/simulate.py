"""Builds a seeded, realistic cloud for the placement's tests and bench: hosts, their VMs, the sick ones.

Pure: all randomness comes from one `random.Random(seed)` and the time from `now`, so a seed is a cloud.
Room is accounted as the daemons would publish it: each host's `free` is its capacity minus its VMs.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from evacuator.placement.model import FunctionKey, HostState, Room, Verdict, VmDemand

GIB = 1 << 30
TIB = 1 << 40
# Guest vCPUs per physical core: clouds overcommit CPU; memory and disk are not overcommitted here.
VCPUS_PER_CORE = 3
_HOST_MEMORY_GIB = (256, 384, 512, 768, 1024)
_HOST_CORES = (64, 96, 128)
_POOL_TIB = (4, 8, 12, 16)
# (vCPUs, memory GiB, weight): a general-purpose mix, small VMs most common.
_FLAVORS = (
    (1, 1, 10),
    (1, 2, 10),
    (2, 4, 20),
    (2, 8, 15),
    (4, 8, 15),
    (4, 16, 12),
    (8, 32, 10),
    (16, 64, 5),
    (32, 128, 3),
)
_DISK_GIB = ((20, 30), (40, 25), (80, 20), (100, 10), (200, 10), (500, 5))
_PRIORITIES = (0, 0, 0, 10, 100)
# Shares of the healthy hosts in each other state a real view holds at any moment.
_ODD_SHARES = {"maintenance": 0.01, "quarantined": 0.01, "stale": 0.005, "refusing": 0.005}
STALE_SECONDS = 600.0
# Placing one VM tries this many random hosts before the cloud counts as full for it.
_TRIES = 30


@dataclass(frozen=True, slots=True, kw_only=True)
class Cloud:
    """The view one daemon would hold, and what an evacuation of the sick hosts asks `plan` to place."""

    hosts: tuple[HostState, ...]
    running: tuple[VmDemand, ...]  # every VM, `source` being where it runs
    moving: tuple[VmDemand, ...]  # the VMs on the sick hosts
    sick: tuple[str, ...]
    spares: tuple[str, ...]  # empty hosts the admin keeps: a policy's `preferred`


@dataclass(slots=True)
class _Host:
    """A host while the cloud is being filled (mutable only inside `simulate_cloud`)."""

    name: str
    capacity: Room
    fill_share: float
    used: Room
    functions: set[FunctionKey]


def simulate_cloud(
    *,
    hosts: int,
    vms: int,
    sick_share: float,
    seed: int,
    now: datetime,
    spares: int = 0,
    grouped_share: float = 0.1,
    replicated_share: float = 0.2,
) -> Cloud:
    """`hosts` hosts (the last `spares` of them empty spares) and `vms` VMs (fewer if the cloud fills),
    drawn as units: `grouped_share` of the draws a group of 2-4 VMs on one host, `replicated_share` the 2-3
    replicas of one function on distinct hosts, the rest lone VMs. Each host is filled up to its own random
    share of its memory, so some are nearly full and others nearly idle; then `sick_share` of the non-spare
    hosts turn severe or failed, all at once."""
    rng = random.Random(seed)
    pool = [_new_host(rng, index) for index in range(hosts)]
    filled = pool[: hosts - spares]
    tenants = max(1, hosts // 5)
    running: list[VmDemand] = []
    misses = 0
    while len(running) < vms and misses < _TRIES:
        added = _add_unit(
            rng, filled, tenants, len(running), vms - len(running), grouped_share, replicated_share
        )
        misses = 0 if added else misses + 1
        running.extend(added)
    sick = frozenset(h.name for h in rng.sample(filled, round(sick_share * len(filled))))
    # Spares stay healthy and open: that is what an admin keeps them for.
    steady = sick | {h.name for h in pool[hosts - spares :]}
    states = tuple(_state(rng, host, sick, steady, now) for host in pool)
    moving = tuple(vm for vm in running if vm.source in sick)
    return Cloud(
        hosts=states,
        running=tuple(running),
        moving=moving,
        sick=tuple(sorted(sick)),
        spares=tuple(h.name for h in pool[hosts - spares :]),
    )


def _new_host(rng: random.Random, index: int) -> _Host:
    capacity = Room(
        memory_bytes=rng.choice(_HOST_MEMORY_GIB) * GIB,
        vcpus=rng.choice(_HOST_CORES) * VCPUS_PER_CORE,
        disk_bytes=rng.choice(_POOL_TIB) * TIB,
    )
    return _Host(
        name=f"hv{index:04d}",
        capacity=capacity,
        fill_share=rng.uniform(0.3, 0.95),
        used=Room(),
        functions=set(),
    )


def _add_unit(
    rng: random.Random,
    hosts: Sequence[_Host],
    tenants: int,
    serial: int,
    most: int,
    grouped_share: float,
    replicated_share: float,
) -> list[VmDemand]:
    """One group (on one host), one function's replicas (on distinct hosts) or one lone VM, of at most `most`
    VMs; [] if no room."""
    tenant = f"t{rng.randrange(tenants)}"
    draw = rng.random()
    if draw < grouped_share and most >= 2:
        members = [_vm(rng, tenant, f"g{serial}", None) for _ in range(min(rng.randint(2, 4), most))]
        return _place_together(rng, hosts, members)
    if draw < grouped_share + replicated_share and most >= 2:
        function = f"f{serial}"
        replicas: list[VmDemand] = []
        taken: set[str] = set()
        shape = _vm(rng, tenant, None, function)
        for _ in range(min(rng.randint(2, 3), most)):
            placed = _place_together(rng, hosts, [shape], avoid=taken)
            replicas.extend(placed)
            taken.update(vm.source for vm in placed)
        return replicas
    return _place_together(rng, hosts, [_vm(rng, tenant, None, None)])


def _vm(rng: random.Random, tenant: str, group: str | None, function: str | None) -> VmDemand:
    vcpus, memory_gib, _ = rng.choices(_FLAVORS, weights=[f[2] for f in _FLAVORS])[0]
    disk_gib = rng.choices(_DISK_GIB, weights=[d[1] for d in _DISK_GIB])[0][0]
    # The uuid and source are filled in once a host takes it.
    return VmDemand(
        uuid="-",
        source="-",
        memory_bytes=memory_gib * GIB,
        vcpus=vcpus,
        disk_bytes=disk_gib * GIB,
        tenant=tenant,
        group=group,
        function=function,
        priority=rng.choice(_PRIORITIES),
    )


def _place_together(
    rng: random.Random, hosts: Sequence[_Host], shapes: Sequence[VmDemand], avoid: set[str] | None = None
) -> list[VmDemand]:
    need = Room()
    for shape in shapes:
        need = need + shape.room
    for _ in range(_TRIES):
        host = rng.choice(hosts)
        if avoid and host.name in avoid:
            continue
        limit = Room(
            memory_bytes=int(host.capacity.memory_bytes * host.fill_share),
            vcpus=host.capacity.vcpus,
            disk_bytes=host.capacity.disk_bytes,
        )
        if (host.used + need).fits_in(limit):
            host.used = host.used + need
            placed = [_landed(rng, shape, host.name) for shape in shapes]
            host.functions.update(key for vm in placed if (key := vm.function_key) is not None)
            return placed
    return []


def _landed(rng: random.Random, shape: VmDemand, host: str) -> VmDemand:
    return VmDemand(
        uuid=f"{rng.getrandbits(128):032x}",
        source=host,
        memory_bytes=shape.memory_bytes,
        vcpus=shape.vcpus,
        disk_bytes=shape.disk_bytes,
        tenant=shape.tenant,
        group=shape.group,
        function=shape.function,
        priority=shape.priority,
    )


def _state(
    rng: random.Random, host: _Host, sick: frozenset[str], steady: frozenset[str], now: datetime
) -> HostState:
    odd = None
    if host.name not in steady:
        draw, bound = rng.random(), 0.0
        for name, share in _ODD_SHARES.items():
            bound += share
            if odd is None and draw < bound:
                odd = name
    verdict = rng.choice((Verdict.SEVERE, Verdict.FAILED)) if host.name in sick else Verdict.HEALTHY
    if odd == "quarantined":
        verdict = Verdict.MODERATE
    age_seconds = STALE_SECONDS if odd == "stale" else rng.uniform(0.0, 20.0)
    return HostState(
        name=host.name,
        verdict=verdict,
        seen_at=now - timedelta(seconds=age_seconds),
        capacity=host.capacity,
        free=host.capacity - host.used,
        quarantined=odd == "quarantined",
        maintenance=odd == "maintenance",
        accepting=odd != "refusing",
        functions=frozenset(host.functions),
    )
