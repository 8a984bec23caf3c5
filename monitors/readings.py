"""Value types that sensor readers produce and the detector consumes: readings, faults and snapshots."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True, kw_only=True)
class TemperatureReading:
    """One temperature channel, converted to degrees Celsius at the edge.

    `chip` is the stable name (from the device link and `name`); `hwmon` is the `hwmonN` directory, which
    changes across reboots and is kept only for display. `source` names the reader ("hwmon", "ipmi").
    """

    chip: str
    hwmon: str
    sensor: str
    label: str | None
    celsius: float
    max_celsius: float | None = None
    crit_celsius: float | None = None
    emergency_celsius: float | None = None
    max_hyst_celsius: float | None = None
    crit_hyst_celsius: float | None = None
    source: str = "hwmon"

    @property
    def key(self) -> str:
        """The identity of this channel across polls: stable chip name and sensor."""
        return f"{self.chip}/{self.sensor}"


@dataclass(frozen=True, slots=True, kw_only=True)
class SensorFault:
    """A file or source that could not be read this poll; `reason` says why in plain words."""

    path: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class HwmonSnapshot:
    """Everything one hwmon poll produced: the channels that read well and the ones that did not."""

    temperatures: tuple[TemperatureReading, ...] = ()
    faults: tuple[SensorFault, ...] = field(default_factory=tuple)
