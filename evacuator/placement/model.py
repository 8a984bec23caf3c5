"""The placement's values: room, one host's published state, one VM's demand, the policy and the result."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

# (tenant or "", function): two tenants may both call a function "db" without binding each other.
FunctionKey = tuple[str, str]
# (source host, group name): the mover forms a group from one host's VMs by name (moves/engine.py).
GroupKey = tuple[str, str]


class Verdict(StrEnum):
    """A host's health as its own daemon published it; mirrors monitors' Severity (placement imports none)."""

    HEALTHY = "healthy"
    MODERATE = "moderate"
    SEVERE = "severe"
    FAILED = "failed"
    UNKNOWN = "unknown"


class Reason(StrEnum):
    """Why a VM stays on its source. Stable codes: operators and the journal match on them."""

    # No host at all may take VMs now: every one is sick, stale, quarantined, in maintenance or refusing.
    NO_HEALTHY_HOST = "no_healthy_host"
    # Some host may take VMs, but none has room for this VM (or its whole group) above the reserve.
    NO_CAPACITY = "no_capacity"
    # Some host has the room, but each such host already runs, or is given, a VM of the same function.
    ANTI_AFFINITY = "anti_affinity"


@dataclass(frozen=True, slots=True, kw_only=True)
class Room:
    """An amount of guest resources: memory, vCPUs and storage-pool bytes. Negative means over-committed."""

    memory_bytes: int = 0
    vcpus: int = 0
    disk_bytes: int = 0

    def __add__(self, other: Room) -> Room:
        return Room(
            memory_bytes=self.memory_bytes + other.memory_bytes,
            vcpus=self.vcpus + other.vcpus,
            disk_bytes=self.disk_bytes + other.disk_bytes,
        )

    def __sub__(self, other: Room) -> Room:
        return Room(
            memory_bytes=self.memory_bytes - other.memory_bytes,
            vcpus=self.vcpus - other.vcpus,
            disk_bytes=self.disk_bytes - other.disk_bytes,
        )

    def fits_in(self, other: Room) -> bool:
        """True when every resource of this amount is at most the other's."""
        return (
            self.memory_bytes <= other.memory_bytes
            and self.vcpus <= other.vcpus
            and self.disk_bytes <= other.disk_bytes
        )

    def is_non_negative(self) -> bool:
        return self.memory_bytes >= 0 and self.vcpus >= 0 and self.disk_bytes >= 0


ZERO_ROOM = Room()


@dataclass(frozen=True, slots=True, kw_only=True)
class HostState:
    """The latest state a host's daemon published, as every other daemon keeps it.

    `capacity` is what the host offers guests (memory and vCPUs after its own cap and overcommit, its storage
    pool's capacity); `free` is that minus what runs there now (for the pool: its available bytes).
    """

    name: str
    verdict: Verdict
    seen_at: datetime
    capacity: Room
    free: Room
    quarantined: bool = False
    maintenance: bool = False
    accepting: bool = True
    # Functions of the VMs already running there: a replica of one of them is never placed here.
    functions: frozenset[FunctionKey] = frozenset()

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a host state needs a name")
        if self.seen_at.tzinfo is None:
            raise ValueError(f"host {self.name}: seen_at must be timezone-aware (UTC), got {self.seen_at!r}")
        if not self.capacity.is_non_negative():
            raise ValueError(f"host {self.name}: capacity must not be negative, got {self.capacity!r}")

    def fresh(self, now: datetime, stale_after_seconds: float) -> bool:
        """Heard from within the limit; a timestamp ahead of `now` (clocks differ a little) is fresh."""
        return (now - self.seen_at).total_seconds() <= stale_after_seconds


@dataclass(frozen=True, slots=True, kw_only=True)
class VmDemand:
    """One VM to move: where it runs now, what it needs on a destination, and its owner's placement facts."""

    uuid: str
    source: str
    memory_bytes: int
    vcpus: int
    disk_bytes: int
    tenant: str | None = None
    group: str | None = None
    function: str | None = None
    priority: int = 0

    def __post_init__(self) -> None:
        if not self.uuid or not self.source:
            raise ValueError(f"a VM demand needs a uuid and a source host, got {self!r}")
        if min(self.memory_bytes, self.vcpus, self.disk_bytes) < 0:
            raise ValueError(f"VM {self.uuid}: sizes must not be negative, got {self!r}")

    @property
    def room(self) -> Room:
        return Room(memory_bytes=self.memory_bytes, vcpus=self.vcpus, disk_bytes=self.disk_bytes)

    @property
    def function_key(self) -> FunctionKey | None:
        return None if self.function is None else (self.tenant or "", self.function)

    @property
    def group_key(self) -> GroupKey | None:
        return None if self.group is None else (self.source, self.group)


@dataclass(frozen=True, slots=True, kw_only=True)
class PlacementPolicy:
    """The admin's placement settings.

    A host keeps `reserve` free on every resource, or `reserve_fraction` of its capacity if that is more: a
    host is never filled to the last byte by an evacuation, so it can still absorb its own VMs' growth.
    `preferred` lists the admin's spare hosts, tried before all others.
    """

    stale_after_seconds: float
    reserve: Room = ZERO_ROOM
    reserve_fraction: float = 0.0
    preferred: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.stale_after_seconds > 0:
            raise ValueError(f"stale_after_seconds must be positive, got {self.stale_after_seconds!r}")
        if not 0.0 <= self.reserve_fraction <= 1.0:
            raise ValueError(f"reserve_fraction must be within 0..1, got {self.reserve_fraction!r}")
        if not self.reserve.is_non_negative():
            raise ValueError(f"reserve must not be negative, got {self.reserve!r}")

    def reserve_on(self, capacity: Room) -> Room:
        """What a host of this capacity keeps free: per resource, the larger of the two reserves."""
        share = self.reserve_fraction
        return Room(
            memory_bytes=max(self.reserve.memory_bytes, math.ceil(capacity.memory_bytes * share)),
            vcpus=max(self.reserve.vcpus, math.ceil(capacity.vcpus * share)),
            disk_bytes=max(self.reserve.disk_bytes, math.ceil(capacity.disk_bytes * share)),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Placement:
    """Every VM asked about is in exactly one of the two: a destination, or the reason it stays."""

    assignments: Mapping[str, str] = field(default_factory=dict)
    unplaced: Mapping[str, Reason] = field(default_factory=dict)
