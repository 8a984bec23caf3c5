"""Blast-radius guards, pure: whether a sick host may start evacuating now, given the cloud as the host view
shows it. Why: a detector bug, a bad sensor firmware or a heat wave in one room can make many hosts "sick" at
once; if every one of them evacuates, the cloud runs out of room and the evacuation is the outage. The
anchors: Windows failover clusters quarantine at most 25% of nodes, Kubernetes NodeHealthCheck stops
remediating below 51% healthy, draino spaces drains 10 minutes apart, Proxmox HA and NHC have a global
pause.

The rules, for a host about to start its first move:
- an admin's cloud-wide pause holds every host, failed ones too (the admin stopped everything on purpose);
- otherwise a failed host is never held back: its VMs are on dying hardware;
- a severe host waits while `evacuation_slots()` hosts evacuate already (a share of the cloud's hosts);
- and while its VMs leaving would leave less than `min_free_share` of the cloud's room free (per resource,
  over the hosts that may take VMs);
- and until `min_start_spacing_seconds` after the latest other host's start.
Counting the evacuating hosts on the broker (exclusive slot queues) is the wiring's part; this module decides
over values only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from evacuator.placement.model import HostState, Room, Verdict


class HoldCause(StrEnum):
    """Why a host is held back. Stable codes: tenants see them in evacuation_updated (`hold`)."""

    PAUSED = "paused"
    TOO_MANY_EVACUATING = "too_many_evacuating"
    TOO_LITTLE_ROOM = "too_little_room"
    TOO_SOON = "too_soon"


@dataclass(frozen=True, slots=True, kw_only=True)
class GuardPolicy:
    max_evacuating_share: float = 0.25
    min_free_share: float = 0.10
    min_start_spacing_seconds: float = 600.0

    def __post_init__(self) -> None:
        if not 0 < self.max_evacuating_share <= 1 or not 0 <= self.min_free_share < 1:
            raise ValueError(f"shares out of range: {self!r}")
        if self.min_start_spacing_seconds < 0:
            raise ValueError(f"min_start_spacing_seconds must not be negative: {self!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Evacuating:
    """Another host evacuating, since when (its own published `evacuating_since`)."""

    host: str
    since: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class Hold:
    """Not now: `cause` (stable), `detail` for people, `until` when it is known to end (spacing)."""

    cause: HoldCause
    detail: str
    until: datetime | None = None


def evacuation_slots(host_count: int, policy: GuardPolicy) -> int:
    """How many hosts may evacuate at once in a cloud of `host_count`: the share, rounded down, never
    below one (a small cloud still evacuates one host at a time)."""
    return max(1, math.floor(host_count * policy.max_evacuating_share + 1e-9))


def check(*, me: str, failed: bool, paused: bool, hosts: Sequence[HostState],
          evacuating: Sequence[Evacuating], leaving: Room, now: datetime,
          policy: GuardPolicy) -> Hold | None:  # fmt: skip
    """None when host `me` may start evacuating now, else why not. `hosts`: the fresh view (stale hosts
    count as unknown); `evacuating`: the other hosts evacuating now; `leaving`: what `me`'s VMs take along."""
    if paused:
        return Hold(cause=HoldCause.PAUSED,
                    detail="an admin paused evacuations cloud-wide (evacuator resume)")  # fmt: skip
    if failed:
        return None
    others = [e for e in evacuating if e.host != me]
    allowed = evacuation_slots(len(hosts), policy)
    if len(others) >= allowed:
        return Hold(cause=HoldCause.TOO_MANY_EVACUATING,
                    detail=f"{len(others)} of {len(hosts)} hosts evacuate already; at most {allowed} at once "
                           f"({policy.max_evacuating_share:.0%})")  # fmt: skip
    short = _short_of_room(me, hosts, leaving, policy)
    if short is not None:
        return Hold(cause=HoldCause.TOO_LITTLE_ROOM, detail=short)
    if others and policy.min_start_spacing_seconds > 0:
        latest = max(others, key=lambda e: e.since)
        until = latest.since + timedelta(seconds=policy.min_start_spacing_seconds)
        if now < until:
            return Hold(cause=HoldCause.TOO_SOON, until=until,
                        detail=f"{latest.host} began evacuating at {latest.since.isoformat()}; the next "
                               f"start waits {policy.min_start_spacing_seconds:g} s")  # fmt: skip
    return None


def _short_of_room(me: str, hosts: Sequence[HostState], leaving: Room, policy: GuardPolicy) -> str | None:
    """Why the cloud's room after `me`'s VMs leave would be below the floor, per resource; None when not."""
    takers = [h for h in hosts if h.name != me and h.verdict is Verdict.HEALTHY and h.accepting
              and not h.quarantined and not h.maintenance]  # fmt: skip
    capacity = sum((h.capacity for h in takers), Room())
    free = sum((h.free for h in takers), Room())
    after = free - leaving
    for name in ("memory_bytes", "vcpus", "disk_bytes"):
        total = getattr(capacity, name)
        floor = policy.min_free_share * total
        if getattr(after, name) < floor:
            return (f"after this host's VMs ({name} {getattr(leaving, name)}) the cloud's hosts that take "
                    f"VMs would have {getattr(after, name)} of {total} {name} free, below the floor of "
                    f"{policy.min_free_share:.0%}")  # fmt: skip
    return None
