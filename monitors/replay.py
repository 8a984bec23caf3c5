"""Replay a recorded trace of readings (JSON lines) through the pure detector into a verdict timeline."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, ValidationError

from monitors.detector import Detector, DetectorPolicy
from monitors.errors import TraceError
from monitors.readings import (
    ChannelCount,
    CsrowReading,
    DimmReading,
    ErrorKind,
    HostSnapshot,
    MemoryControllerReading,
    MemoryErrorEvent,
    SourceState,
    SourceStatus,
    TemperatureReading,
)
from monitors.verdicts import Reason, Severity

ACTIONS = {
    Severity.HEALTHY: "return to service: lift the quarantine",
    Severity.MODERATE: "quarantine: place no new VMs on this host",
    Severity.SEVERE: "notify each tenant, then evacuate its VMs when its preprocessing window ends",
    Severity.FAILED: "evacuate every VM at once (tenants are told the move started)",
    Severity.UNKNOWN: "no automatic move: data missing or stale, alert the operator",
}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Temperature(_Model):
    chip: str
    sensor: str
    celsius: float
    hwmon: str = ""
    label: str | None = None
    max_celsius: float | None = None
    crit_celsius: float | None = None
    emergency_celsius: float | None = None
    max_hyst_celsius: float | None = None
    crit_hyst_celsius: float | None = None
    source: str = "hwmon"


class _Channel(_Model):
    channel: str
    ce_count: int | None = None
    dimm_label: str | None = None


class _Csrow(_Model):
    csrow: str
    ce_count: int | None = None
    ue_count: int | None = None
    channels: list[_Channel] = []


class _Dimm(_Model):
    dimm: str
    label: str | None = None
    ce_count: int | None = None
    ue_count: int | None = None


class _Controller(_Model):
    controller: str
    mc_name: str | None = None
    ce_count: int | None = None
    ue_count: int | None = None
    ce_noinfo_count: int | None = None
    ue_noinfo_count: int | None = None
    csrows: list[_Csrow] = []
    dimms: list[_Dimm] = []


class _Event(_Model):
    location: str
    kind: Literal["corrected", "uncorrected"]
    source: str = "trace"
    event_id: str = ""
    count: int = 1
    at: AwareDatetime | None = None
    message: str = ""


class _Source(_Model):
    source: str
    state: Literal["ok", "absent", "failed"]
    detail: str = ""


class _Line(_Model):
    """One trace line: the `evacuator sensors --json` object plus `at` (extra report keys are accepted)."""

    at: AwareDatetime
    temperatures: list[_Temperature] = []
    memory_controllers: list[_Controller] = []
    memory_events: list[_Event] = []
    sources: list[_Source] = []
    schema_version: int | None = None
    faults: list[dict[str, str]] = []
    verdict: dict[str, object] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TraceSample:
    at: datetime
    snapshot: HostSnapshot


@dataclass(frozen=True, slots=True, kw_only=True)
class TimelineEntry:
    """The verdict after one sample, and what the service would do if it changed."""

    at: datetime
    severity: Severity
    previous: Severity
    reasons: tuple[Reason, ...]

    @property
    def changed(self) -> bool:
        return self.severity is not self.previous

    @property
    def action(self) -> str:
        return ACTIONS[self.severity] if self.changed else ""


def parse_trace(lines: Iterable[str]) -> list[TraceSample]:
    """Parse JSON lines (blank lines and `#` comments skipped); raises TraceError naming line and field."""
    samples: list[TraceSample] = []
    for number, raw in enumerate(lines, start=1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        try:
            line = _Line.model_validate_json(text)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "(line)"
            raise TraceError(f"trace line {number}: field {field}: {first['msg']}") from exc
        if samples and line.at < samples[-1].at:
            raise TraceError(f"trace line {number}: field at: goes back in time ({line.at.isoformat()})")
        samples.append(TraceSample(at=line.at, snapshot=_snapshot(line)))
    return samples


def replay(samples: Iterable[TraceSample], policy: DetectorPolicy) -> list[TimelineEntry]:
    """Feed every sample to a fresh detector at the sample's own time; no clock, no I/O, no VM touched."""
    detector = Detector(policy)
    previous = Severity.HEALTHY
    timeline: list[TimelineEntry] = []
    for sample in samples:
        verdict = detector.observe(sample.snapshot, sample.at)
        timeline.append(
            TimelineEntry(at=sample.at, severity=verdict.severity, previous=previous, reasons=verdict.reasons)
        )
        previous = verdict.severity
    return timeline


def replay_lines(lines: Iterable[str], policy: DetectorPolicy) -> list[TimelineEntry]:
    return replay(parse_trace(lines), policy)


def format_timeline(timeline: list[TimelineEntry], *, only_changes: bool = True) -> str:
    """One line per verdict change with the action and the reasons; a summary of transitions last."""
    lines: list[str] = []
    for entry in timeline:
        if only_changes and not entry.changed:
            continue
        lines.append(f"{entry.at.isoformat()}  {entry.previous} -> {entry.severity}: {entry.action}")
        lines.extend(f"    {r.severity}: {r.message}" for r in entry.reasons)
    counts = {s: sum(1 for e in timeline if e.changed and e.severity is s) for s in Severity}
    summary = ", ".join(f"{s}={n}" for s, n in counts.items() if n)
    final = timeline[-1].severity if timeline else Severity.UNKNOWN
    lines.append(f"{len(timeline)} samples; transitions into {summary or 'nothing'}; final verdict {final}")
    return "\n".join(lines)


def _snapshot(line: _Line) -> HostSnapshot:
    return HostSnapshot(
        temperatures=tuple(TemperatureReading(**t.model_dump()) for t in line.temperatures),
        memory_controllers=tuple(_controller(m) for m in line.memory_controllers),
        memory_events=tuple(
            MemoryErrorEvent(
                source=e.source,
                event_id=e.event_id,
                location=e.location,
                kind=ErrorKind(e.kind),
                count=e.count,
                at=e.at,
                message=e.message,
            )
            for e in line.memory_events
        ),
        sources=tuple(
            SourceStatus(source=s.source, state=SourceState(s.state), detail=s.detail) for s in line.sources
        ),
    )


def _controller(m: _Controller) -> MemoryControllerReading:
    return MemoryControllerReading(
        controller=m.controller,
        mc_name=m.mc_name,
        ce_count=m.ce_count,
        ue_count=m.ue_count,
        ce_noinfo_count=m.ce_noinfo_count,
        ue_noinfo_count=m.ue_noinfo_count,
        csrows=tuple(
            CsrowReading(
                csrow=c.csrow,
                ce_count=c.ce_count,
                ue_count=c.ue_count,
                channels=tuple(ChannelCount(**ch.model_dump()) for ch in c.channels),
            )
            for c in m.csrows
        ),
        dimms=tuple(DimmReading(**d.model_dump()) for d in m.dimms),
    )
