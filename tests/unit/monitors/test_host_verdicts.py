"""Host-level behaviour: no crying wolf on oscillation, hold-down, flap cap, stale data, vanished chips."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from monitors.damping import DampingPolicy
from monitors.detector import Detector, DetectorPolicy, Severity, TemperatureRule
from monitors.readings import HostSnapshot, SourceState, SourceStatus, TemperatureReading
from monitors.settings import MonitorsSettings
from monitors.sources import EdacSource, HwmonSource, SourcePoller

T0 = datetime(2026, 1, 1, tzinfo=UTC)
POLL = timedelta(seconds=10)
HOUR_OF_POLLS = 360
SYSFS = Path(__file__).resolve().parents[2] / "data" / "sysfs"
H, M, S, U = Severity.HEALTHY, Severity.MODERATE, Severity.SEVERE, Severity.UNKNOWN


def hot(celsius: float, *, source_state: SourceState = SourceState.OK) -> HostSnapshot:
    reading = TemperatureReading(
        chip="coretemp-platform-coretemp.0",
        hwmon="hwmon1",
        sensor="temp1",
        label="Package id 0",
        celsius=celsius,
    )
    temps = (reading,) if source_state is SourceState.OK else ()
    return HostSnapshot(temperatures=temps, sources=(SourceStatus(source="hwmon", state=source_state),))


def transitions_into(severity: Severity, timeline: list[Severity]) -> int:
    return sum(
        1 for before, after in zip([H, *timeline], timeline, strict=False) if after is severity != before
    )


def timeline(policy: DetectorPolicy, samples: list[float]) -> list[Severity]:
    detector = Detector(policy)
    return [detector.observe(hot(c), T0 + i * POLL).severity for i, c in enumerate(samples)]


PRODUCTION = MonitorsSettings().to_policy()


@pytest.mark.parametrize(
    "wave",
    [
        pytest.param(lambda i: 85 + 3 * math.sin(i / 2), id="sine-3C-around-threshold"),
        pytest.param(lambda i: 95.0 if (i // 3) % 2 == 0 else 70.0, id="square-70-95-every-30s"),
        pytest.param(lambda i: 86.0 if i % 4 else 60.0, id="mostly-over-with-dips"),
        pytest.param(lambda i: 95.0 if (i // 60) % 2 == 0 else 60.0, id="ten-minute-square"),
    ],
)
def test_oscillating_temperature_for_an_hour_is_at_most_one_severe_transition(wave: object) -> None:
    assert callable(wave)
    samples = [float(wave(i)) for i in range(HOUR_OF_POLLS)]
    result = timeline(PRODUCTION, samples)
    assert transitions_into(S, result) <= 1
    assert S in result


def test_hold_down_keeps_severe_after_the_condition_clears() -> None:
    policy = DetectorPolicy(
        temperature=TemperatureRule(consecutive_samples=1), damping=DampingPolicy(hold_down_seconds=60)
    )
    detector = Detector(policy)
    detector.observe(hot(95), T0)
    held = detector.observe(hot(50), T0 + POLL)
    assert held.severity is S and "held down until" in held.reasons[0].message
    assert detector.observe(hot(50), T0 + timedelta(seconds=61)).severity is H


def test_flapping_host_stays_quarantined_while_flapping_and_one_hold_down_after() -> None:
    policy = DetectorPolicy(
        temperature=TemperatureRule(consecutive_samples=1),
        damping=DampingPolicy(hold_down_seconds=30, flap_max_per_hour=2),
    )
    pattern = ([95.0] + [50.0] * 5) * 5 + [50.0] * HOUR_OF_POLLS
    result = timeline(policy, pattern)
    assert transitions_into(S, result[:18]) == 3
    # From the third onset on, the quiet phases are quarantined (moderate), not healthy...
    assert result[18 + 5] is M and result[30 + 300] is M
    # ...until the onsets leave the trailing hour and one more hold-down passes.
    assert result[-1] is H


def test_failing_source_turns_unknown_only_after_the_stale_limit() -> None:
    policy = DetectorPolicy(stale_after_seconds=60)
    detector = Detector(policy)
    detector.observe(hot(40), T0)
    assert (
        detector.observe(hot(40, source_state=SourceState.FAILED), T0 + timedelta(seconds=30)).severity is U
    )
    # No reading at all this poll is already unknown; after the limit the reason names the stale source too.
    late = detector.observe(hot(40, source_state=SourceState.FAILED), T0 + timedelta(seconds=90))
    assert late.severity is U
    assert any(r.source == "hwmon" and r.sensor == "*" for r in late.reasons)
    assert detector.observe(hot(40), T0 + timedelta(seconds=100)).severity is H


def test_vanished_chip_is_unknown_once_stale_and_never_silently_healthy() -> None:
    policy = DetectorPolicy(stale_after_seconds=60)
    detector = Detector(policy)
    other = TemperatureReading(
        chip="nvme-pci-0000:3d:00.0", hwmon="hwmon3", sensor="temp1", label=None, celsius=35
    )
    both = HostSnapshot(temperatures=(*hot(40).temperatures, other))
    only_nvme = HostSnapshot(temperatures=(other,))
    detector.observe(both, T0)
    assert detector.observe(only_nvme, T0 + POLL).severity is H
    late = detector.observe(only_nvme, T0 + timedelta(seconds=120))
    assert late.severity is U and late.reasons[0].sensor == "coretemp-platform-coretemp.0/temp1"


def test_hot_chip_that_vanishes_stays_severe() -> None:
    policy = DetectorPolicy(temperature=TemperatureRule(consecutive_samples=1))
    detector = Detector(policy)
    detector.observe(hot(99), T0)
    assert detector.observe(HostSnapshot(), T0 + POLL).severity is S


def test_faulty_tree_end_to_end_never_crashes_and_reports_healthy_with_faults() -> None:
    poller = SourcePoller([HwmonSource(SYSFS / "faulty"), EdacSource(SYSFS / "faulty")])
    detector = Detector(PRODUCTION)
    snapshot = poller.poll()
    verdict = detector.observe(snapshot, T0)
    assert verdict.severity is H
    assert len(snapshot.faults) == 4
    assert {s.source: s.state for s in snapshot.sources} == {"hwmon": SourceState.OK, "edac": SourceState.OK}
