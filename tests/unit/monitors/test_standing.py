"""Each sensor against its threshold, from the detector's state: what the daemon's metrics show per poll."""

from __future__ import annotations

from datetime import UTC, datetime

from monitors.detector import DetectorPolicy, DetectorState, MemoryRule, TemperatureRule
from monitors.memory_rule import LocationState, MemoryState, Occurrence
from monitors.readings import ErrorKind
from monitors.standing import readings_against_thresholds
from monitors.temperature_rule import ChannelState

T0 = datetime(2026, 1, 1, tzinfo=UTC)
POLICY = DetectorPolicy(temperature=TemperatureRule(threshold_celsius=85.0),
                        memory=MemoryRule(ce_threshold=10, ue_threshold=1))  # fmt: skip


def test_each_seen_channel_and_each_locations_errors_come_with_their_thresholds() -> None:
    state = DetectorState(
        channels={
            "coretemp/temp1": ChannelState(celsius=71.5, threshold_celsius=85.0, last_seen=T0),
            "ipmi/CPU1 Temp": ChannelState(celsius=60.0, threshold_celsius=78.0, last_seen=T0, source="ipmi"),
            "never/seen": ChannelState(),
        },
        memory=MemoryState(counters={}, locations={
            "edac:mc0/dimm0:corrected": LocationState(
                source="edac", label="DIMM_A1", kind=ErrorKind.CORRECTED,
                occurrences=(Occurrence(at=T0, count=3), Occurrence(at=T0, count=2))),
            "edac:mc0:uncorrected": LocationState(
                source="edac", label="mc0", kind=ErrorKind.UNCORRECTED,
                occurrences=(Occurrence(at=T0, count=1),)),
        }),
    )  # fmt: skip
    assert readings_against_thresholds(POLICY, state) == {
        "temperatures": [
            {"source": "hwmon", "sensor": "coretemp/temp1", "celsius": 71.5, "threshold_celsius": 85.0},
            {"source": "ipmi", "sensor": "ipmi/CPU1 Temp", "celsius": 60.0, "threshold_celsius": 78.0},
        ],
        "memory_errors": [
            {"source": "edac", "location": "DIMM_A1", "kind": "corrected", "errors": 5, "threshold": 10},
            {"source": "edac", "location": "mc0", "kind": "uncorrected", "errors": 1, "threshold": 1},
        ],
    }


def test_a_fresh_detector_has_nothing_to_show() -> None:
    assert readings_against_thresholds(POLICY, DetectorState()) == {"temperatures": [], "memory_errors": []}
