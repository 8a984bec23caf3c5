"""Each sensor's latest reading against the threshold it is judged by, from the detector's state (pure).

The daemon logs this after every poll (`sensor_readings`, at debug level) and its metrics show it as gauges,
so an operator sees how close a host is to a verdict, not only the verdict.
"""

from __future__ import annotations

from typing import Any

from monitors.detector import DetectorPolicy, DetectorState
from monitors.readings import ErrorKind


def readings_against_thresholds(
    policy: DetectorPolicy, state: DetectorState
) -> dict[str, list[dict[str, Any]]]:
    """`temperatures`: every channel seen, its last °C and its threshold (a BMC sensor's own critical
    threshold where the rule uses it); `memory_errors`: every location's errors of one kind within the rate
    window, and the count that makes the host sick."""
    temperatures = [
        {"source": channel.source, "sensor": key, "celsius": channel.celsius,
         "threshold_celsius": channel.threshold_celsius}
        for key, channel in sorted(state.channels.items())
        if channel.last_seen is not None
    ]  # fmt: skip
    rule = policy.memory
    memory = [
        {"source": location.source, "location": location.label, "kind": str(location.kind),
         "errors": sum(o.count for o in location.occurrences),
         "threshold": rule.ue_threshold if location.kind is ErrorKind.UNCORRECTED else rule.ce_threshold}
        for _, location in sorted(state.memory.locations.items())
    ]  # fmt: skip
    return {"temperatures": temperatures, "memory_errors": memory}
