"""Memory rule: counter deltas surviving resets, CE rate per DIMM per window, any UE is severe at once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from monitors.detector import Detector, DetectorPolicy, MemoryRule, Severity
from monitors.memory_rule import counter_delta
from monitors.readings import (
    DimmReading,
    ErrorKind,
    HostSnapshot,
    MemoryControllerReading,
    MemoryErrorEvent,
    SourceState,
    SourceStatus,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
POLL = timedelta(seconds=10)
OK = (SourceStatus(source="edac", state=SourceState.OK),)


def edac(ce: int, ue: int = 0, *, dimm_ce: int | None = None) -> HostSnapshot:
    dimm = DimmReading(
        dimm="dimm1", label="CPU_SrcID#0_MC#0_Chan#1_DIMM#0", ce_count=dimm_ce or ce, ue_count=ue
    )
    mc = MemoryControllerReading(
        controller="mc0",
        mc_name="Skylake Socket#0 IMC#0",
        ce_count=ce,
        ue_count=ue,
        ce_noinfo_count=0,
        ue_noinfo_count=0,
        dimms=(dimm,),
    )
    return HostSnapshot(memory_controllers=(mc,), sources=OK)


@pytest.mark.parametrize(
    ("previous", "current", "delta"),
    [(None, 7, 0), (3, 3, 0), (3, 5, 2), (9, 2, 2), (9, 0, 0)],
    ids=["first-sight-is-baseline", "unchanged", "increase", "reset-counts-new-value", "reset-to-zero"],
)
def test_counter_delta(previous: int | None, current: int, delta: int) -> None:
    assert counter_delta(previous, current) == delta


def run(snapshots: list[HostSnapshot], policy: DetectorPolicy | None = None) -> list[Severity]:
    detector = Detector(policy or DetectorPolicy())
    return [detector.observe(s, T0 + i * POLL).severity for i, s in enumerate(snapshots)]


H, M, S = Severity.HEALTHY, Severity.MODERATE, Severity.SEVERE


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        pytest.param([(5, 0), (5, 0)], [H, H], id="old-errors-at-start-are-a-baseline"),
        pytest.param([(0, 0), (9, 0)], [H, H], id="nine-ce-in-a-day-is-fine"),
        pytest.param([(0, 0), (4, 0), (10, 0)], [H, H, M], id="ten-ce-on-one-dimm-is-moderate"),
        pytest.param([(0, 0), (0, 1)], [H, S], id="single-ue-is-severe-within-one-poll"),
        pytest.param([(0, 0), (8, 0), (1, 0), (2, 0)], [H, H, H, M], id="reset-does-not-lose-errors"),
        pytest.param([(100, 3), (0, 0)], [H, H], id="reset-to-zero-is-not-an-error"),
    ],
)
def test_edac_counter_table(counts: list[tuple[int, int]], expected: list[Severity]) -> None:
    assert run([edac(ce, ue) for ce, ue in counts]) == expected


def test_ce_rate_window_slides() -> None:
    policy = DetectorPolicy(memory=MemoryRule(ce_threshold=10, ce_window_seconds=3600))
    detector = Detector(policy)
    detector.observe(edac(0), T0)
    detector.observe(edac(6), T0 + timedelta(minutes=1))
    assert detector.observe(edac(9), T0 + timedelta(minutes=50)).severity is H
    assert detector.observe(edac(10), T0 + timedelta(minutes=59)).severity is M
    assert detector.observe(edac(10), T0 + timedelta(minutes=62)).severity is H


def test_moderate_reason_names_the_dimm_and_the_count() -> None:
    detector = Detector(DetectorPolicy())
    detector.observe(edac(0), T0)
    verdict = detector.observe(edac(12), T0 + POLL)
    (reason,) = verdict.reasons
    assert (reason.source, reason.sensor, reason.value, reason.threshold) == (
        "edac",
        "CPU_SrcID#0_MC#0_Chan#1_DIMM#0",
        12.0,
        10.0,
    )
    assert reason.severity is M and "24 h" in reason.unit


def _event(kind: ErrorKind, event_id: str, at: datetime | None) -> MemoryErrorEvent:
    return MemoryErrorEvent(
        source="rasdaemon", event_id=event_id, location="DIMM_A1", kind=kind, count=1, at=at, message="x"
    )


def test_rasdaemon_ue_event_is_severe_in_the_poll_it_arrives() -> None:
    detector = Detector(DetectorPolicy())
    ok = (SourceStatus(source="rasdaemon", state=SourceState.OK),)
    assert detector.observe(HostSnapshot(sources=ok), T0).severity is H
    snapshot = HostSnapshot(memory_events=(_event(ErrorKind.UNCORRECTED, "7", T0),), sources=ok)
    verdict = detector.observe(snapshot, T0 + POLL)
    assert verdict.severity is S and verdict.reasons[0].sensor == "DIMM_A1"


def test_events_older_than_the_window_are_ignored() -> None:
    old = T0 - timedelta(days=3)
    snapshot = HostSnapshot(
        memory_events=(_event(ErrorKind.UNCORRECTED, "1", old),),
        sources=(SourceStatus(source="rasdaemon", state=SourceState.OK),),
    )
    assert Detector(DetectorPolicy()).observe(snapshot, T0).severity is H


def test_unreadable_counter_keeps_the_previous_value() -> None:
    detector = Detector(DetectorPolicy())
    detector.observe(edac(0), T0)
    broken = edac(0)
    mc = broken.memory_controllers[0]
    from dataclasses import replace

    detector.observe(HostSnapshot(memory_controllers=(replace(mc, ue_count=None),), sources=OK), T0 + POLL)
    assert detector.observe(edac(0, 0), T0 + 2 * POLL).severity is H


def test_ue_reason_names_the_dimm_whose_counter_rose() -> None:
    detector = Detector(DetectorPolicy())
    detector.observe(edac(0, 0), T0)
    verdict = detector.observe(edac(0, 1), T0 + POLL)
    assert verdict.reasons[0].sensor == "Skylake Socket#0 IMC#0: CPU_SrcID#0_MC#0_Chan#1_DIMM#0"
    assert "uncorrected (multi-bit)" in verdict.reasons[0].message
