"""Pure temperature rule: per-channel N-of-M samples over a threshold, cleared below a lower one."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from monitors.readings import TemperatureReading
from monitors.verdicts import Reason, Severity

DEFAULT_HYSTERESIS_CELSIUS = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class TemperatureRule:
    """`consecutive_samples` (N) of the last `window_samples` (M, default N) over the threshold raise severe.

    The condition clears only when a sample falls to `clear_celsius` (default 5 °C below the threshold), so a
    temperature hovering at the threshold raises it once. For readings from `sensor_crit_sources` a channel's
    own critical limit (e.g. a BMC inlet sensor at 42 °C) lowers its threshold, and its clear threshold with
    it. Only BMC limits are trusted by default: vendors set them for this purpose, while hwmon drivers
    sometimes report bogus ones (0 °C, 20 °C); limits under `min_sensor_crit_celsius` are ignored.
    """

    threshold_celsius: float = 85.0
    consecutive_samples: int = 3
    window_samples: int | None = None
    clear_celsius: float | None = None
    sensor_crit_sources: tuple[str, ...] = ("ipmi",)
    min_sensor_crit_celsius: float = 30.0
    failed_celsius: float | None = None

    @property
    def samples_window(self) -> int:
        return max(self.window_samples or self.consecutive_samples, self.consecutive_samples)

    @property
    def hysteresis_celsius(self) -> float:
        if self.clear_celsius is None:
            return DEFAULT_HYSTERESIS_CELSIUS
        return self.threshold_celsius - self.clear_celsius

    def threshold_for(self, reading: TemperatureReading) -> float:
        crit = reading.crit_celsius
        if (
            reading.source in self.sensor_crit_sources
            and crit is not None
            and crit >= self.min_sensor_crit_celsius
        ):
            return min(self.threshold_celsius, crit)
        return self.threshold_celsius


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelState:
    """What the rule remembers about one channel between polls."""

    over: tuple[bool, ...] = ()
    failing: tuple[bool, ...] = ()
    raised: Severity = Severity.HEALTHY
    celsius: float = 0.0
    threshold_celsius: float = 0.0
    last_seen: datetime | None = None
    source: str = "hwmon"


ChannelStates = Mapping[str, ChannelState]


def step_temperature(
    rule: TemperatureRule,
    channels: ChannelStates,
    readings: tuple[TemperatureReading, ...],
    now: datetime,
) -> tuple[dict[str, ChannelState], list[Reason]]:
    """Advance every channel by one sample; channels absent this poll keep their state unchanged."""
    updated = dict(channels)
    reasons: list[Reason] = []
    for reading in readings:
        state = _step_channel(rule, channels.get(reading.key, ChannelState()), reading, now)
        updated[reading.key] = state
        if state.raised is not Severity.HEALTHY:
            reasons.append(_reason(reading, state))
    return updated, reasons


def _step_channel(
    rule: TemperatureRule, state: ChannelState, reading: TemperatureReading, now: datetime
) -> ChannelState:
    threshold = rule.threshold_for(reading)
    clear = threshold - rule.hysteresis_celsius
    window = rule.samples_window
    over = (*state.over, reading.celsius >= threshold)[-window:]
    failing = (*state.failing, rule.failed_celsius is not None and reading.celsius >= rule.failed_celsius)
    failing = failing[-window:]
    raised = state.raised
    if sum(failing) >= rule.consecutive_samples:
        raised = Severity.FAILED
    elif sum(over) >= rule.consecutive_samples and raised is Severity.HEALTHY:
        raised = Severity.SEVERE
    elif reading.celsius <= clear:
        raised = Severity.HEALTHY
    return ChannelState(
        over=over,
        failing=failing,
        raised=raised,
        celsius=reading.celsius,
        threshold_celsius=threshold,
        last_seen=now,
        source=reading.source,
    )


def _reason(reading: TemperatureReading, state: ChannelState) -> Reason:
    name = reading.label or reading.sensor
    return Reason(
        source=reading.source,
        sensor=reading.key,
        value=reading.celsius,
        threshold=state.threshold_celsius,
        unit="celsius",
        message=f"{reading.chip} {name} at {reading.celsius:g} °C, threshold {state.threshold_celsius:g} °C",
        severity=state.raised,
    )
