"""Folding the states hosts publish into the view placement plans over: which one a host's latest is, and
what a host not heard from lately counts as (unknown: never a destination).

A state is kept with the run of its host's daemon that sent it (`incarnation`, random per start) and its
place in that run (`sequence`): within one run a lower sequence is an older state arriving late, and is
ignored. Runs cannot be ordered by their random ids: a new run's state replaces the kept one when it was
sent no earlier by the host's own clock (both come from one clock), or when the kept one is stale anyway, so
a clock stepped back at a restart costs at most `stale_after_seconds` of the new run being ignored.

`HostState.seen_at` is when this daemon received the state, by its own clock: staleness never depends on
two hosts' clocks agreeing. Pure: standard library and placement's own model only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from evacuator.placement.model import HostState, Verdict


@dataclass(frozen=True, slots=True, kw_only=True)
class Heard:
    """One host's state as this daemon received it, with the sender's run and sequence."""

    state: HostState  # seen_at: when it was received here
    incarnation: str
    sequence: int
    sent_at: datetime  # by the sender's clock, only compared with the same host's other states
    # What placement does not decide on, kept for people reading the view (`evacuator hosts`).
    reasons: tuple[str, ...] = ()
    running_vms: int = 0
    disk_allocation_bytes: int = 0
    # How a source reaches the host's libvirt and pool, when it publishes them (host.advertised_libvirt_uri):
    # what makes a host that is no configured peer a destination (placement.scope cloud).
    libvirt_uri: str | None = None
    storage_pool: str | None = None
    # Since when the host evacuates (its first move under the blast-radius guards), by its own clock.
    evacuating_since: datetime | None = None
    # Since when the host is back in service and wants the VMs that left it before then (returns.py).
    move_back_since: datetime | None = None

    @property
    def host(self) -> str:
        return self.state.name


def supersedes(new: Heard, known: Heard | None, *, stale_after_seconds: float) -> bool:
    """Whether `new` replaces `known` as its host's latest state (see the module's docstring)."""
    if known is None:
        return True
    if new.incarnation == known.incarnation:
        return new.sequence > known.sequence
    return new.sent_at >= known.sent_at or not known.state.fresh(new.state.seen_at, stale_after_seconds)


def as_seen(heard: Heard, now: datetime, stale_after_seconds: float) -> HostState:
    """The host's state for placement at `now`: as published while fresh, its verdict unknown once stale."""
    if heard.state.fresh(now, stale_after_seconds):
        return heard.state
    return dataclasses.replace(heard.state, verdict=Verdict.UNKNOWN)


def view_at(heard: Iterable[Heard], now: datetime, stale_after_seconds: float) -> list[HostState]:
    """Every host's state for placement at `now`, by host name."""
    return [as_seen(h, now, stale_after_seconds) for h in sorted(heard, key=lambda h: h.host)]
