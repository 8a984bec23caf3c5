"""Value types that sensor readers produce and the detector consumes: readings, faults and snapshots."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


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


class SourceState(StrEnum):
    """How one source fared this poll: `absent` means not present on this host (no data, not an error)."""

    OK = "ok"
    ABSENT = "absent"
    FAILED = "failed"


class ErrorKind(StrEnum):
    """Memory error classes: uncorrected covers multi-bit, fatal and deferred (poisoned) errors."""

    CORRECTED = "corrected"
    UNCORRECTED = "uncorrected"


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceStatus:
    """One source's outcome this poll, with a human detail for failures."""

    source: str
    state: SourceState
    detail: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelCount:
    """A legacy csrow channel: its corrected-error counter and the DIMM label behind it."""

    channel: str
    ce_count: int | None
    dimm_label: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class CsrowReading:
    """A legacy EDAC chip-select row (`csrowN`)."""

    csrow: str
    ce_count: int | None
    ue_count: int | None
    channels: tuple[ChannelCount, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class DimmReading:
    """One EDAC `dimmM` or `rankM` directory: label and its cumulative error counters."""

    dimm: str
    label: str | None
    ce_count: int | None
    ue_count: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryControllerReading:
    """One EDAC memory controller (`mcN`); counters are cumulative since driver load or reset."""

    controller: str
    mc_name: str | None
    ce_count: int | None
    ue_count: int | None
    ce_noinfo_count: int | None
    ue_noinfo_count: int | None
    csrows: tuple[CsrowReading, ...] = ()
    dimms: tuple[DimmReading, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class EdacSnapshot:
    """Everything one EDAC poll produced."""

    memory_controllers: tuple[MemoryControllerReading, ...] = ()
    faults: tuple[SensorFault, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryErrorEvent:
    """A memory error reported as an event (rasdaemon row, BMC SEL entry), not as a counter.

    `location` is the stable key the detector rates per DIMM (the DIMM label when known); `at` is when the
    error happened, None when the source did not say.
    """

    source: str
    event_id: str
    location: str
    kind: ErrorKind
    count: int
    at: datetime | None
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class HostSnapshot:
    """One poll of every configured source, merged: what the detector observes."""

    temperatures: tuple[TemperatureReading, ...] = ()
    memory_controllers: tuple[MemoryControllerReading, ...] = ()
    memory_events: tuple[MemoryErrorEvent, ...] = ()
    faults: tuple[SensorFault, ...] = ()
    sources: tuple[SourceStatus, ...] = ()

    @property
    def has_data(self) -> bool:
        return bool(self.temperatures or self.memory_controllers or self.memory_events) or any(
            s.state is SourceState.OK for s in self.sources
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceResult:
    """What one source produced in one poll."""

    status: SourceStatus
    temperatures: tuple[TemperatureReading, ...] = ()
    memory_controllers: tuple[MemoryControllerReading, ...] = ()
    memory_events: tuple[MemoryErrorEvent, ...] = ()
    faults: tuple[SensorFault, ...] = ()
