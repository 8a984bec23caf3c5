"""Pure host-level damping: hold a raised severity down before healthy, and quarantine a flapping host."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from monitors.verdicts import Reason, Severity

FLAP_WINDOW_SECONDS = 3600.0
_ACTIONABLE = (Severity.MODERATE, Severity.SEVERE, Severity.FAILED)


@dataclass(frozen=True, slots=True, kw_only=True)
class DampingPolicy:
    """`hold_down_seconds`: a raised severity is kept this long after its last raw sighting.

    `flap_max_per_hour`: more onsets than this within an hour keep the host at least moderate (quarantined)
    until a hold-down passes without the flapping; None disables the cap.
    """

    hold_down_seconds: float = 0.0
    flap_max_per_hour: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Sighting:
    at: datetime
    reasons: tuple[Reason, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class DampingState:
    last_raised: Mapping[Severity, Sighting]
    previous: Severity = Severity.HEALTHY
    onsets: tuple[datetime, ...] = ()
    flap_until: datetime | None = None


EMPTY_DAMPING_STATE = DampingState(last_raised={})


def damp(
    policy: DampingPolicy, state: DampingState, raw: Severity, reasons: list[Reason], now: datetime
) -> tuple[DampingState, Severity, list[Reason]]:
    """The reported severity: the worst one seen within the hold-down, floored while the host flaps."""
    last_raised = dict(state.last_raised)
    if raw in _ACTIONABLE:
        last_raised[raw] = Sighting(at=now, reasons=tuple(r for r in reasons if r.severity is raw))
    hold = timedelta(seconds=policy.hold_down_seconds)
    held = [s for s in _ACTIONABLE if s in last_raised and now - last_raised[s].at <= hold]
    severity = max([raw, *held], key=lambda s: s.rank)
    out = list(reasons)
    if severity is not raw:
        until = last_raised[severity].at + hold
        out.extend(_held(r, until) for r in last_raised[severity].reasons)
    onsets = state.onsets
    if severity in _ACTIONABLE and state.previous not in _ACTIONABLE:
        onsets = (*onsets, now)
    onsets = tuple(t for t in onsets if now - t <= timedelta(seconds=FLAP_WINDOW_SECONDS))
    flap_until = state.flap_until
    limit = policy.flap_max_per_hour
    if limit is not None and len(onsets) > limit:
        flap_until = now + hold
    new_state = replace(
        state, last_raised=last_raised, previous=severity, onsets=onsets, flap_until=flap_until
    )
    if flap_until is not None and now <= flap_until and severity.rank < Severity.MODERATE.rank:
        out.append(_flapping(len(onsets), limit, flap_until))
        severity = Severity.MODERATE
    return new_state, severity, out


def _held(reason: Reason, until: datetime) -> Reason:
    return replace(reason, message=f"{reason.message} (held down until {until.isoformat()})")


def _flapping(onsets: int, limit: int | None, until: datetime) -> Reason:
    return Reason(
        source="detector",
        sensor="host",
        value=float(onsets),
        threshold=float(limit or 0),
        unit="onsets per hour",
        message=f"host flapped {onsets} times within an hour; quarantined until {until.isoformat()}",
        severity=Severity.MODERATE,
    )
