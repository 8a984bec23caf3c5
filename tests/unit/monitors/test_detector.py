"""The pure detector: N samples over the threshold make the host severe, noise and missing data do not."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from monitors.detector import Detector, DetectorPolicy, Severity, TemperatureRule
from monitors.readings import HwmonSnapshot, SensorFault, TemperatureReading

T0 = datetime(2026, 1, 1, tzinfo=UTC)
POLL = timedelta(seconds=10)


def snapshot(*celsius: float, crit: float | None = None) -> HwmonSnapshot:
    return HwmonSnapshot(
        temperatures=tuple(
            TemperatureReading(
                chip="coretemp-platform-coretemp.0",
                hwmon="hwmon1",
                sensor=f"temp{i}",
                label=f"Core {i}",
                celsius=c,
                crit_celsius=crit,
            )
            for i, c in enumerate(celsius, start=1)
        )
    )


def run(policy: DetectorPolicy, samples: list[float]) -> list[Severity]:
    detector = Detector(policy)
    return [detector.observe(snapshot(c), T0 + i * POLL).severity for i, c in enumerate(samples)]


RULE = DetectorPolicy(temperature=TemperatureRule(threshold_celsius=85.0, consecutive_samples=3))
H, S, U = Severity.HEALTHY, Severity.SEVERE, Severity.UNKNOWN


@pytest.mark.parametrize(
    ("samples", "expected"),
    [
        pytest.param([50, 99, 50, 50], [H, H, H, H], id="one-noisy-sample-moves-nothing"),
        pytest.param([86, 86, 50, 86, 86], [H, H, H, H, H], id="interrupted-run-never-reaches-three"),
        pytest.param([86, 87, 88], [H, H, S], id="three-consecutive-over-is-severe"),
        pytest.param([85, 85, 85], [H, H, S], id="threshold-is-inclusive"),
        pytest.param([90, 90, 90, 82, 79], [H, H, S, S, H], id="clears-only-at-default-hysteresis"),
    ],
)
def test_temperature_rule_table(samples: list[float], expected: list[Severity]) -> None:
    assert run(RULE, samples) == expected


def test_n_of_m_tolerates_one_dip_inside_the_window() -> None:
    policy = DetectorPolicy(temperature=TemperatureRule(consecutive_samples=3, window_samples=5))
    assert run(policy, [90, 50, 90, 90]) == [H, H, H, S]


def test_explicit_clear_threshold_holds_severe_until_reached() -> None:
    policy = DetectorPolicy(temperature=TemperatureRule(consecutive_samples=1, clear_celsius=70.0))
    assert run(policy, [90, 75, 71, 70]) == [S, S, S, H]


def test_severe_verdict_names_sensor_value_and_threshold() -> None:
    detector = Detector(RULE)
    for i in range(3):
        verdict = detector.observe(snapshot(50.0, 91.5), T0 + i * POLL)
    assert verdict.severity is Severity.SEVERE
    assert verdict.at == T0 + 2 * POLL
    (reason,) = verdict.reasons
    assert (reason.source, reason.sensor, reason.value, reason.threshold, reason.unit) == (
        "hwmon",
        "coretemp-platform-coretemp.0/temp2",
        91.5,
        85.0,
        "celsius",
    )
    assert "Core 2" in reason.message and "91.5" in reason.message


def test_no_data_at_all_is_unknown_never_healthy() -> None:
    verdict = Detector(RULE).observe(HwmonSnapshot(), T0)
    assert verdict.severity is U and verdict.reasons[0].severity is U


def test_all_channels_faulted_is_unknown() -> None:
    faulted = HwmonSnapshot(faults=(SensorFault(path="/sys/x/temp1_input", reason="empty file"),))
    verdict = Detector(RULE).observe(faulted, T0)
    assert verdict.severity is U and "1 unreadable" in verdict.reasons[0].message


def test_sensor_crit_lowers_the_threshold_for_trusted_sources() -> None:
    policy = DetectorPolicy(
        temperature=TemperatureRule(consecutive_samples=1, sensor_crit_sources=("hwmon",))
    )
    verdict = Detector(policy).observe(snapshot(45.0, crit=42.0), T0)
    assert verdict.severity is S and verdict.reasons[0].threshold == 42.0


@pytest.mark.parametrize(
    ("sources", "crit"),
    [
        pytest.param(("ipmi",), 42.0, id="hwmon-crit-untrusted-by-default"),
        pytest.param(("hwmon",), 0.0, id="bogus"),
    ],
)
def test_sensor_crit_ignored_when_untrusted_or_bogus(sources: tuple[str, ...], crit: float) -> None:
    policy = DetectorPolicy(temperature=TemperatureRule(consecutive_samples=1, sensor_crit_sources=sources))
    assert Detector(policy).observe(snapshot(45.0, crit=crit), T0).severity is H


def test_raised_channel_that_stops_reporting_stays_severe_then_becomes_stale() -> None:
    policy = DetectorPolicy(temperature=TemperatureRule(consecutive_samples=1), stale_after_seconds=60)
    detector = Detector(policy)
    detector.observe(snapshot(50.0, 95.0), T0)
    assert detector.observe(snapshot(50.0), T0 + POLL).severity is S
    late = detector.observe(snapshot(50.0), T0 + timedelta(seconds=120))
    assert late.severity is S
    assert {r.severity for r in late.reasons} == {S, U}


def test_failed_threshold_outranks_severe() -> None:
    policy = DetectorPolicy(temperature=TemperatureRule(consecutive_samples=2, failed_celsius=105.0))
    assert run(policy, [110, 110]) == [H, Severity.FAILED]


def test_naive_timestamps_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        Detector(RULE).observe(snapshot(40.0), datetime(2026, 1, 1))
