"""Timers: the APScheduler adapter against a real SQLite job store, and the in-memory fake."""

from __future__ import annotations

import pickle
import shutil
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from evacuator.incident.scheduler import WINDOW_ELAPSED, ApschedulerTimers
from tests.fakes.timers import ManualTimers

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
FLAT_LAYOUT_STORE = Path(__file__).parents[1] / "data" / "timers" / "flat-layout-0.1.0.sqlite"


def _collector() -> tuple[list[str], threading.Event, object]:
    fired: list[str] = []
    event = threading.Event()

    def on_fire(key: str) -> None:
        fired.append(key)
        event.set()

    return fired, event, on_fire


def test_timer_fires_at_its_deadline(tmp_path: Path) -> None:
    fired, event, on_fire = _collector()
    timers = ApschedulerTimers(tmp_path / "timers.sqlite")
    timers.start(on_fire)  # type: ignore[arg-type]
    try:
        timers.schedule("vm-1", datetime.now(UTC) + timedelta(seconds=0.3))
        assert event.wait(5)
        assert fired == ["vm-1"]
        assert timers.pending() == {}
    finally:
        timers.shutdown()


def test_fire_now_expedites_a_far_timer(tmp_path: Path) -> None:
    fired, event, on_fire = _collector()
    timers = ApschedulerTimers(tmp_path / "timers.sqlite")
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


def test_timers_survive_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "timers.sqlite"
    at = datetime.now(UTC) + timedelta(hours=2)
    first = ApschedulerTimers(db)
    first.start(lambda key: None)
    first.schedule("vm-1", at)
    first.shutdown()

    second = ApschedulerTimers(db)
    second.start(lambda key: None)
    try:
        pending = second.pending()
        assert list(pending) == ["vm-1"]
        assert abs((pending["vm-1"] - at).total_seconds()) < 1
    finally:
        second.shutdown()


def _stored_targets(db: Path) -> dict[str, str]:
    with sqlite3.connect(db) as connection:
        rows = connection.execute("SELECT id, job_state FROM evacuation_timers").fetchall()
    return {job_id: pickle.loads(blob)["func"] for job_id, blob in rows}


def test_timers_stored_by_the_flat_layout_survive_the_upgrade(tmp_path: Path) -> None:
    db = tmp_path / "timers.sqlite"
    shutil.copy(FLAT_LAYOUT_STORE, db)
    assert set(_stored_targets(db).values()) == {"evacuator.timers:window_elapsed"}
    fired, event, on_fire = _collector()
    timers = ApschedulerTimers(db)
    timers.start(on_fire)  # type: ignore[arg-type]
    try:
        assert timers.pending() == {
            "0b5e1f0a-5c1e-4d2a-9a51-3f7f4c2d9e01": datetime(2099, 1, 1, 12, 0, tzinfo=UTC),
            "1c6f2a1b-6d2f-4e3b-8b62-4a8a5d3e0f12": datetime(2099, 6, 1, 12, 0, tzinfo=UTC),
        }
        assert set(_stored_targets(db).values()) == {WINDOW_ELAPSED}, "rewritten for good, not per restore"
        assert timers.fire_now("1c6f2a1b-6d2f-4e3b-8b62-4a8a5d3e0f12")
        assert event.wait(5)
        assert fired == ["1c6f2a1b-6d2f-4e3b-8b62-4a8a5d3e0f12"]
        assert list(timers.pending()) == ["0b5e1f0a-5c1e-4d2a-9a51-3f7f4c2d9e01"]
    finally:
        timers.shutdown()


def test_a_deadline_missed_while_down_fires_on_restart(tmp_path: Path) -> None:
    db = tmp_path / "timers.sqlite"
    first = ApschedulerTimers(db)
    first.start(lambda key: None)
    first.schedule("vm-1", datetime.now(UTC) + timedelta(seconds=1))
    first.shutdown()
    threading.Event().wait(1.5)

    fired, event, on_fire = _collector()
    second = ApschedulerTimers(db)
    second.start(on_fire)  # type: ignore[arg-type]
    try:
        assert event.wait(5), "a missed evacuation deadline must still fire after a restart"
        assert fired == ["vm-1"]
    finally:
        second.shutdown()


def test_rescheduling_the_same_key_replaces_it(tmp_path: Path) -> None:
    timers = ApschedulerTimers(tmp_path / "timers.sqlite")
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
