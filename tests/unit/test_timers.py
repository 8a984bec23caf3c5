"""Timers: the APScheduler adapter (in memory, taking over an older store) and the in-memory fake."""

from __future__ import annotations

import shutil
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from evacuator.incident.scheduler import ApschedulerTimers
from tests.fakes.timers import ManualTimers

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
FLAT_LAYOUT_STORE = Path(__file__).parents[1] / "data" / "timers" / "flat-layout-0.1.0.sqlite"
WEB, DB = "0b5e1f0a-5c1e-4d2a-9a51-3f7f4c2d9e01", "1c6f2a1b-6d2f-4e3b-8b62-4a8a5d3e0f12"


def _collector() -> tuple[list[str], threading.Event, object]:
    fired: list[str] = []
    event = threading.Event()

    def on_fire(key: str) -> None:
        fired.append(key)
        event.set()

    return fired, event, on_fire


def test_timer_fires_at_its_deadline() -> None:
    fired, event, on_fire = _collector()
    timers = ApschedulerTimers()
    timers.start(on_fire)  # type: ignore[arg-type]
    try:
        timers.schedule("vm-1", datetime.now(UTC) + timedelta(seconds=0.3))
        assert event.wait(5)
        assert fired == ["vm-1"]
        assert timers.pending() == {}
    finally:
        timers.shutdown()


def test_fire_now_expedites_a_far_timer() -> None:
    fired, event, on_fire = _collector()
    timers = ApschedulerTimers()
    timers.start(on_fire)  # type: ignore[arg-type]
    try:
        timers.schedule("vm-1", datetime.now(UTC) + timedelta(hours=1))
        timers.schedule("vm-2", datetime.now(UTC) + timedelta(hours=1))
        assert timers.fire_now("vm-1") is True
        assert event.wait(5)
        assert fired == ["vm-1"]
        assert set(timers.pending()) == {"vm-2"}
        assert timers.fire_now("vm-unknown") is False
    finally:
        timers.shutdown()


def test_a_deadline_already_past_fires_at_once() -> None:
    fired, event, on_fire = _collector()
    timers = ApschedulerTimers()
    timers.start(on_fire)  # type: ignore[arg-type]
    try:
        timers.schedule("vm-1", datetime.now(UTC) - timedelta(minutes=5))
        assert event.wait(5), "a deadline missed while the daemon was down must still fire"
        assert fired == ["vm-1"]
    finally:
        timers.shutdown()


def test_rescheduling_the_same_key_replaces_it() -> None:
    timers = ApschedulerTimers()
    timers.start(lambda key: None)
    try:
        timers.schedule("vm-1", datetime.now(UTC) + timedelta(hours=1))
        later = datetime.now(UTC) + timedelta(hours=3)
        timers.schedule("vm-1", later)
        assert abs((timers.pending()["vm-1"] - later).total_seconds()) < 1
        assert timers.cancel("vm-1") is True
        assert timers.cancel("vm-1") is False
    finally:
        timers.shutdown()


def test_the_timers_of_an_earlier_versions_store_are_taken_over_without_unpickling(tmp_path: Path) -> None:
    store = tmp_path / "timers.sqlite"
    shutil.copy(FLAT_LAYOUT_STORE, store)
    with sqlite3.connect(store) as db:  # a job state nobody can unpickle: only the plain columns are read
        db.execute("UPDATE evacuation_timers SET job_state = x'00ff00'")
    fired, event, on_fire = _collector()
    timers = ApschedulerTimers(legacy_store=store)
    timers.start(on_fire)  # type: ignore[arg-type]
    try:
        assert timers.pending() == {WEB: datetime(2099, 1, 1, 12, 0, tzinfo=UTC),
                                    DB: datetime(2099, 6, 1, 12, 0, tzinfo=UTC)}
        assert timers.fire_now(DB) and event.wait(5) and fired == [DB]
    finally:
        timers.shutdown()
    assert not store.exists() and (tmp_path / "timers.sqlite.taken-over").exists(), "taken over once"
    again = ApschedulerTimers(legacy_store=store)
    again.start(lambda key: None)
    try:
        assert again.pending() == {}
    finally:
        again.shutdown()


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (T0, []),
        (T0 + timedelta(seconds=10), ["a"]),
        (T0 + timedelta(seconds=30), ["a", "b"]),
    ],
)
def test_manual_timers_fire_what_is_due_in_deadline_order(now: datetime, expected: list[str]) -> None:
    timers = ManualTimers()
    timers.start(lambda key: None)
    timers.schedule("b", T0 + timedelta(seconds=20))
    timers.schedule("a", T0 + timedelta(seconds=10))
    timers.advance(now)
    assert timers.fired == expected
