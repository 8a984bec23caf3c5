"""Pure memory-error rule: counter deltas that survive resets, per-DIMM rate windows, any UE is severe."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from monitors.readings import ErrorKind, MemoryControllerReading, MemoryErrorEvent
from monitors.verdicts import Reason, Severity


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryRule:
    """`ce_threshold` corrected errors on one DIMM within `ce_window_seconds` → moderate (mcelog's default is
    10 per 24 h); `ue_threshold` uncorrected errors within `ue_window_seconds` → severe."""

    ce_threshold: int = 10
    ce_window_seconds: float = 86_400.0
    ue_threshold: int = 1
    ue_window_seconds: float = 86_400.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Occurrence:
    """Errors counted at one instant on one location."""

    at: datetime
    count: int


@dataclass(frozen=True, slots=True, kw_only=True)
class LocationState:
    """The errors of one kind on one location still inside their rate window."""

    source: str
    label: str
    kind: ErrorKind
    occurrences: tuple[Occurrence, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryState:
    """Last value of every cumulative counter, and every location's window."""

    counters: Mapping[str, int]
    locations: Mapping[str, LocationState]


EMPTY_MEMORY_STATE = MemoryState(counters={}, locations={})


@dataclass(frozen=True, slots=True, kw_only=True)
class _Counter:
    key: str
    value: int | None
    source: str
    location: str
    label: str
    kind: ErrorKind | None  # None: tracked only to name the DIMMs behind a controller's UE
    controller: str


def counter_delta(previous: int | None, current: int) -> int:
    """Errors since the last poll; a counter that went down was reset, so all of it is new."""
    if previous is None:
        return 0
    return current - previous if current >= previous else current


def step_memory(
    rule: MemoryRule,
    state: MemoryState,
    controllers: tuple[MemoryControllerReading, ...],
    events: tuple[MemoryErrorEvent, ...],
    now: datetime,
) -> tuple[MemoryState, list[Reason]]:
    """Fold this poll's counters and events into the windows and report every location over its rate."""
    counters = dict(state.counters)
    locations = dict(state.locations)
    rising: list[tuple[_Counter, int]] = []
    for counter in _edac_counters(controllers):
        if counter.value is None:
            continue
        delta = counter_delta(state.counters.get(counter.key), counter.value)
        counters[counter.key] = counter.value
        if delta > 0:
            rising.append((counter, delta))
    for counter, delta in rising:
        if counter.kind is None:
            continue
        label = counter.label
        if counter.kind is ErrorKind.UNCORRECTED:
            dimms = [c.label for c, _ in rising if c.kind is None and c.controller == counter.controller]
            label = f"{label}: {', '.join(dimms)}" if dimms else label
        _add(locations, counter.source, counter.location, label, counter.kind, now, delta)
    for event in events:
        at = min(event.at, now) if event.at is not None else now
        _add(locations, event.source, event.location, event.location, event.kind, at, event.count)
    trimmed = {k: v for k, v in ((k, _trim(rule, v, now)) for k, v in locations.items()) if v.occurrences}
    reasons = [r for loc in trimmed.values() if (r := _judge(rule, loc)) is not None]
    return MemoryState(counters=counters, locations=trimmed), reasons


def _edac_counters(controllers: tuple[MemoryControllerReading, ...]) -> list[_Counter]:
    """Per-DIMM CE (dimm/rank dirs, else csrow channels) and per-controller UE counters."""
    found: list[_Counter] = []
    for mc in controllers:
        name = mc.controller
        found.append(
            _Counter(
                key=f"{name}/ue",
                value=mc.ue_count,
                source="edac",
                location=name,
                label=mc.mc_name or name,
                kind=ErrorKind.UNCORRECTED,
                controller=name,
            )
        )
        found.append(
            _Counter(
                key=f"{name}/ce_noinfo",
                value=mc.ce_noinfo_count,
                source="edac",
                location=f"{name}/noinfo",
                label=f"{name} (no DIMM info)",
                kind=ErrorKind.CORRECTED,
                controller=name,
            )
        )
        for dimm in mc.dimms:
            location = f"{name}/{dimm.dimm}"
            found.append(
                _Counter(
                    key=f"{location}/ce",
                    value=dimm.ce_count,
                    source="edac",
                    location=location,
                    label=dimm.label or location,
                    kind=ErrorKind.CORRECTED,
                    controller=name,
                )
            )
            found.append(
                _Counter(
                    key=f"{location}/ue",
                    value=dimm.ue_count,
                    source="edac",
                    location=location,
                    label=dimm.label or location,
                    kind=None,
                    controller=name,
                )
            )
        if mc.dimms:
            continue
        for row in mc.csrows:
            row_labels = [c.dimm_label for c in row.channels if c.dimm_label]
            found.append(
                _Counter(
                    key=f"{name}/{row.csrow}/ue",
                    value=row.ue_count,
                    source="edac",
                    location=f"{name}/{row.csrow}",
                    label=" or ".join(row_labels) or f"{name}/{row.csrow}",
                    kind=None,
                    controller=name,
                )
            )
            for channel in row.channels:
                location = f"{name}/{row.csrow}/{channel.channel}"
                found.append(
                    _Counter(
                        key=f"{location}/ce",
                        value=channel.ce_count,
                        source="edac",
                        location=location,
                        label=channel.dimm_label or location,
                        kind=ErrorKind.CORRECTED,
                        controller=name,
                    )
                )
    return found


def _add(
    locations: dict[str, LocationState],
    source: str,
    location: str,
    label: str,
    kind: ErrorKind,
    at: datetime,
    count: int,
) -> None:
    key = f"{source}:{location}:{kind}"
    current = locations.get(key) or LocationState(source=source, label=label, kind=kind)
    occurrences = (*current.occurrences, Occurrence(at=at, count=count))
    locations[key] = LocationState(source=source, label=label, kind=kind, occurrences=occurrences)


def _trim(rule: MemoryRule, location: LocationState, now: datetime) -> LocationState:
    seconds = rule.ce_window_seconds if location.kind is ErrorKind.CORRECTED else rule.ue_window_seconds
    since = now - timedelta(seconds=seconds)
    kept = tuple(o for o in location.occurrences if o.at > since)
    if len(kept) == len(location.occurrences):
        return location
    return LocationState(source=location.source, label=location.label, kind=location.kind, occurrences=kept)


def _judge(rule: MemoryRule, location: LocationState) -> Reason | None:
    total = sum(o.count for o in location.occurrences)
    if location.kind is ErrorKind.UNCORRECTED:
        threshold, seconds, severity = rule.ue_threshold, rule.ue_window_seconds, Severity.SEVERE
        what = "uncorrected (multi-bit)"
    else:
        threshold, seconds, severity = rule.ce_threshold, rule.ce_window_seconds, Severity.MODERATE
        what = "corrected"
    if total < threshold:
        return None
    hours = seconds / 3600
    return Reason(
        source=location.source,
        sensor=location.label,
        value=float(total),
        threshold=float(threshold),
        unit=f"errors per {hours:g} h",
        message=f"{total} {what} memory errors on {location.label} within {hours:g} h",
        severity=severity,
    )
