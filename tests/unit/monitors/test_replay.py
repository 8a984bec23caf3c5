"""Trace replay: JSON lines in, verdict timeline out; bad lines named by number and field."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from monitors.detector import DetectorPolicy, Severity, TemperatureRule
from monitors.errors import TraceError
from monitors.replay import format_timeline, parse_trace, replay_lines
from monitors.report import build_sensor_report
from monitors.settings import MonitorsSettings
from monitors.sources import EdacSource, HwmonSource, SourcePoller

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SYSFS = Path(__file__).resolve().parents[2] / "data" / "sysfs"
POLICY = DetectorPolicy(temperature=TemperatureRule(consecutive_samples=3))


def line(seconds: int, celsius: float, **extra: object) -> str:
    temp = {"chip": "coretemp-platform-coretemp.0", "sensor": "temp1", "celsius": celsius}
    return json.dumps({"at": (T0 + timedelta(seconds=seconds)).isoformat(), "temperatures": [temp], **extra})


def test_heat_wave_timeline_names_the_action() -> None:
    trace = [line(10 * i, c) for i, c in enumerate([50, 90, 91, 92, 93, 60])]
    timeline = replay_lines(["# recorded on hv-17", "", *trace], POLICY)
    assert [e.severity for e in timeline] == [Severity.HEALTHY] * 3 + [Severity.SEVERE] * 2 + [
        Severity.HEALTHY
    ]
    text = format_timeline(timeline)
    assert "healthy -> severe: notify each tenant" in text
    assert "severe -> healthy: return to service" in text
    assert text.endswith("6 samples; transitions into healthy=1, severe=1; final verdict healthy")


def test_memory_event_line_is_severe_at_once() -> None:
    event = {"location": "DIMM_A1", "kind": "uncorrected", "source": "rasdaemon"}
    timeline = replay_lines([line(0, 40), line(10, 40, memory_events=[event])], POLICY)
    assert [e.severity for e in timeline] == [Severity.HEALTHY, Severity.SEVERE]


def test_sensor_report_plus_at_is_a_valid_trace_line() -> None:
    root = SYSFS / "amd-epyc"
    report = build_sensor_report(SourcePoller([HwmonSource(root), EdacSource(root)]).poll(), sysfs_root=root)
    samples = parse_trace([json.dumps({"at": T0.isoformat(), **report})])
    assert len(samples[0].snapshot.temperatures) == 6
    assert samples[0].snapshot.memory_controllers[1].csrows[0].channels[0].dimm_label == "P1_DIMM_A0"


def test_production_settings_replay_an_oscillating_hour_with_one_severe_transition() -> None:
    trace = [line(10 * i, 95.0 if (i // 3) % 2 == 0 else 70.0) for i in range(360)]
    timeline = replay_lines(trace, MonitorsSettings().to_policy())
    assert sum(1 for e in timeline if e.changed and e.severity is Severity.SEVERE) == 1


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ('{"temperatures": []}', "trace line 2: field at: Field required"),
        ('{"at": "2026-01-01T00:00:00"}', "trace line 2: field at: Input should have timezone info"),
        (
            '{"at": "2026-01-01T00:00:00Z", "temperature": []}',
            "trace line 2: field temperature: Extra inputs",
        ),
        (
            '{"at": "2026-01-01T00:00:00Z", "temperatures": [{"chip": "c", "sensor": "t", "celsius": "x"}]}',
            "trace line 2: field temperatures.0.celsius",
        ),
        ("not json", "trace line 2: field (line): Invalid JSON"),
        ('{"at": "2025-01-01T00:00:00Z"}', "trace line 2: field at: goes back in time"),
    ],
)
def test_bad_trace_lines_are_named(bad: str, message: str) -> None:
    with pytest.raises(TraceError) as excinfo:
        parse_trace([line(0, 40), bad])
    assert str(excinfo.value).startswith(message)
