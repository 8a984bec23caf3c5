"""The pure host detector: folds snapshots into a frozen state and a HostVerdict (no I/O, no clock)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from monitors.damping import EMPTY_DAMPING_STATE, DampingPolicy, DampingState, damp
from monitors.memory_rule import EMPTY_MEMORY_STATE, MemoryRule, MemoryState, step_memory
from monitors.readings import HostSnapshot, HwmonSnapshot, SourceState
from monitors.temperature_rule import ChannelState, TemperatureRule, step_temperature
from monitors.verdicts import HostVerdict, Reason, Severity, worst

__all__ = [
    "DampingPolicy",
    "Detector",
    "DetectorPolicy",
    "DetectorState",
    "HostVerdict",
    "MemoryRule",
    "Reason",
    "Severity",
    "TemperatureRule",
    "evaluate",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class DetectorPolicy:
    """Every rule and host-level damping knob; built from the YAML settings by the composition root."""

    temperature: TemperatureRule = field(default_factory=TemperatureRule)
    memory: MemoryRule = field(default_factory=MemoryRule)
    damping: DampingPolicy = field(default_factory=DampingPolicy)
    stale_after_seconds: float = 300.0


@dataclass(frozen=True, slots=True, kw_only=True)
class DetectorState:
    """Everything the detector remembers between polls; replaced, never mutated."""

    channels: Mapping[str, ChannelState] = field(default_factory=dict)
    memory: MemoryState = EMPTY_MEMORY_STATE
    damping: DampingState = EMPTY_DAMPING_STATE
    source_last_ok: Mapping[str, datetime] = field(default_factory=dict)
    source_first_seen: Mapping[str, datetime] = field(default_factory=dict)


def as_host_snapshot(snapshot: HwmonSnapshot | HostSnapshot) -> HostSnapshot:
    if isinstance(snapshot, HostSnapshot):
        return snapshot
    return HostSnapshot(temperatures=snapshot.temperatures, faults=snapshot.faults)


def evaluate(
    policy: DetectorPolicy, state: DetectorState, snapshot: HwmonSnapshot | HostSnapshot, now: datetime
) -> tuple[DetectorState, HostVerdict]:
    """One poll: the next state and the host verdict at `now`."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (UTC)")
    host = as_host_snapshot(snapshot)
    channels, reasons = step_temperature(policy.temperature, state.channels, host.temperatures, now)
    memory, memory_reasons = step_memory(
        policy.memory, state.memory, host.memory_controllers, host.memory_events, now
    )
    reasons.extend(memory_reasons)
    reasons.extend(_absent_channels(policy, channels, host, now))
    last_ok, first_seen, source_reasons = _sources(policy, state, host, now)
    reasons.extend(source_reasons)
    if not host.has_data:
        reasons.append(_no_data_reason(host))
    damping, severity, reported = damp(
        policy.damping, state.damping, worst([r.severity for r in reasons]), reasons, now
    )
    ordered = tuple(sorted(reported, key=lambda r: (-r.severity.rank, r.source, r.sensor)))
    new_state = DetectorState(
        channels=channels,
        memory=memory,
        damping=damping,
        source_last_ok=last_ok,
        source_first_seen=first_seen,
    )
    return new_state, HostVerdict(severity=severity, reasons=ordered, at=now)


def _absent_channels(
    policy: DetectorPolicy, channels: Mapping[str, ChannelState], snapshot: HostSnapshot, now: datetime
) -> list[Reason]:
    """A silent channel keeps its raised condition; once stale it also makes the host unknown."""
    present = {r.key for r in snapshot.temperatures}
    stale_after = timedelta(seconds=policy.stale_after_seconds)
    reasons: list[Reason] = []
    for key, channel in sorted(channels.items()):
        if key in present or channel.last_seen is None:
            continue
        if channel.raised is not Severity.HEALTHY:
            reasons.append(
                Reason(
                    source=channel.source,
                    sensor=key,
                    value=channel.celsius,
                    threshold=channel.threshold_celsius,
                    unit="celsius",
                    message=f"{key} not reporting; last reading {channel.celsius:g} °C was over threshold",
                    severity=channel.raised,
                )
            )
        if now - channel.last_seen > stale_after:
            reasons.append(_stale(channel.source, key, channel.last_seen, policy.stale_after_seconds))
    return reasons


def _sources(
    policy: DetectorPolicy, state: DetectorState, snapshot: HostSnapshot, now: datetime
) -> tuple[dict[str, datetime], dict[str, datetime], list[Reason]]:
    """A source that worked before (or never) and fails longer than the stale limit makes the host unknown.

    A source absent from the start is simply not on this host; one that disappears later is failing.
    """
    last_ok = dict(state.source_last_ok)
    first_seen = dict(state.source_first_seen)
    reasons: list[Reason] = []
    for status in snapshot.sources:
        first_seen.setdefault(status.source, now)
        if status.state is SourceState.OK:
            last_ok[status.source] = now
            continue
        known = last_ok.get(status.source)
        if status.state is SourceState.ABSENT and known is None:
            continue
        since = known or first_seen[status.source]
        if now - since > timedelta(seconds=policy.stale_after_seconds):
            reasons.append(_stale(status.source, "*", since, policy.stale_after_seconds, status.detail))
    return last_ok, first_seen, reasons


def _stale(source: str, sensor: str, since: datetime, limit: float, detail: str = "") -> Reason:
    suffix = f": {detail}" if detail else ""
    return Reason(
        source=source,
        sensor=sensor,
        value=None,
        threshold=limit,
        unit="seconds",
        message=f"{source} {sensor} has not reported since {since.isoformat()}{suffix}",
        severity=Severity.UNKNOWN,
    )


def _no_data_reason(snapshot: HostSnapshot) -> Reason:
    detail = f"; {len(snapshot.faults)} unreadable" if snapshot.faults else ""
    return Reason(
        source="detector",
        sensor="*",
        value=None,
        threshold=None,
        unit="",
        message=f"no sensor readings this poll{detail}",
        severity=Severity.UNKNOWN,
    )


class Detector:
    """Holds the detector state for the service: feed it one snapshot per poll, read back the verdict."""

    def __init__(self, policy: DetectorPolicy, state: DetectorState | None = None) -> None:
        self._policy = policy
        self._state = state or DetectorState()
        self._verdict: HostVerdict | None = None

    @property
    def policy(self) -> DetectorPolicy:
        return self._policy

    @property
    def state(self) -> DetectorState:
        return self._state

    def reconfigure(self, policy: DetectorPolicy) -> None:
        """New thresholds from a reloaded settings file (SIGHUP). The state is kept: a channel counting its
        samples over the threshold goes on counting against the new one, and a host in its hold-down stays
        there. One reference swap, so a poll on another thread sees the old policy or the new, never half."""
        self._policy = policy

    @property
    def verdict(self) -> HostVerdict | None:
        """The latest verdict, None before the first observation."""
        return self._verdict

    def observe(self, snapshot: HwmonSnapshot | HostSnapshot, now: datetime) -> HostVerdict:
        """Fold one poll's snapshot in and return the host verdict at `now` (tz-aware UTC)."""
        self._state, self._verdict = evaluate(self._policy, self._state, snapshot, now)
        return self._verdict
