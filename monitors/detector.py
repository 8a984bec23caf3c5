"""The pure host detector: folds snapshots into a frozen state and a HostVerdict (no I/O, no clock)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from monitors.readings import HwmonSnapshot
from monitors.temperature_rule import ChannelState, TemperatureRule, step_temperature
from monitors.verdicts import HostVerdict, Reason, Severity, worst

__all__ = [
    "Detector",
    "DetectorPolicy",
    "DetectorState",
    "HostVerdict",
    "Reason",
    "Severity",
    "TemperatureRule",
    "evaluate",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class DetectorPolicy:
    """Every rule and host-level damping knob; built from the YAML settings by the composition root."""

    temperature: TemperatureRule = field(default_factory=TemperatureRule)
    stale_after_seconds: float = 300.0


@dataclass(frozen=True, slots=True, kw_only=True)
class DetectorState:
    """Everything the detector remembers between polls; replaced, never mutated."""

    channels: Mapping[str, ChannelState] = field(default_factory=dict)


def evaluate(
    policy: DetectorPolicy, state: DetectorState, snapshot: HwmonSnapshot, now: datetime
) -> tuple[DetectorState, HostVerdict]:
    """One poll: the next state and the host verdict at `now`."""
    channels, reasons = step_temperature(policy.temperature, state.channels, snapshot.temperatures, now)
    reasons.extend(_absent_channels(policy, channels, snapshot, now))
    if not snapshot.temperatures:
        reasons.append(_no_data_reason(snapshot))
    severity = worst([r.severity for r in reasons])
    ordered = tuple(sorted(reasons, key=lambda r: (-r.severity.rank, r.source, r.sensor)))
    return DetectorState(channels=channels), HostVerdict(severity=severity, reasons=ordered, at=now)


def _absent_channels(
    policy: DetectorPolicy, channels: Mapping[str, ChannelState], snapshot: HwmonSnapshot, now: datetime
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
                    source="hwmon",
                    sensor=key,
                    value=channel.celsius,
                    threshold=channel.threshold_celsius,
                    unit="celsius",
                    message=f"{key} not reporting; last reading {channel.celsius:g} °C was over threshold",
                    severity=channel.raised,
                )
            )
        if now - channel.last_seen > stale_after:
            reasons.append(
                Reason(
                    source="hwmon",
                    sensor=key,
                    value=None,
                    threshold=policy.stale_after_seconds,
                    unit="seconds",
                    message=f"{key} has not reported since {channel.last_seen.isoformat()}",
                    severity=Severity.UNKNOWN,
                )
            )
    return reasons


def _no_data_reason(snapshot: HwmonSnapshot) -> Reason:
    detail = f"; {len(snapshot.faults)} unreadable" if snapshot.faults else ""
    return Reason(
        source="hwmon",
        sensor="*",
        value=None,
        threshold=None,
        unit="",
        message=f"no temperature readings this poll{detail}",
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

    @property
    def verdict(self) -> HostVerdict | None:
        """The latest verdict, None before the first observation."""
        return self._verdict

    def observe(self, snapshot: HwmonSnapshot, now: datetime) -> HostVerdict:
        """Fold one poll's snapshot in and return the host verdict at `now` (tz-aware UTC)."""
        self._state, self._verdict = evaluate(self._policy, self._state, snapshot, now)
        return self._verdict
