"""Persistent per-VM evacuation timers: the Timers seam, its APScheduler adapter and an in-memory fake."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Protocol

import structlog
from apscheduler.events import EVENT_JOB_EXECUTED, JobExecutionEvent
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler

from evacuator.errors import TimerError
from evacuator.jobstore import SqliteJobStore

log = structlog.get_logger(__name__)

OnFire = Callable[[str], None]


class Timers(Protocol):
    """One timer per key (a VM's UUID); firing hands the key to the callback given to start()."""

    def start(self, on_fire: OnFire) -> None: ...
    def schedule(self, key: str, at: datetime) -> None: ...
    def fire_now(self, key: str) -> bool: ...
    def cancel(self, key: str) -> bool: ...
    def pending(self) -> dict[str, datetime]: ...
    def shutdown(self) -> None: ...


def window_elapsed(key: str) -> str:
    """The stored job's target. It decides nothing: the listener routes the key to the service.

    APScheduler persists jobs as a textual reference to an importable function, so the function cannot be
    a bound method of the service; routing through the executed-event listener keeps the service out of
    module globals.
    """
    return key


class ApschedulerTimers:
    """Timers in an APScheduler 3 BackgroundScheduler backed by a SQLite job store."""

    def __init__(self, db_path: Path) -> None:
        self._store = SqliteJobStore(db_path)
        self._scheduler = BackgroundScheduler(
            jobstores={"default": self._store},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone="UTC",
        )

    def start(self, on_fire: OnFire) -> None:
        def listener(event: JobExecutionEvent) -> None:
            on_fire(event.job_id)

        self._scheduler.add_listener(listener, EVENT_JOB_EXECUTED)
        try:
            self._scheduler.start()
        except Exception as exc:  # SQLAlchemy and APScheduler raise many kinds; all mean "no timers"
            raise TimerError(f"cannot start the timer store: {exc}") from exc

    def schedule(self, key: str, at: datetime) -> None:
        # A stable id with replace_existing makes re-planning after a restart idempotent (STYLE habit 10).
        self._scheduler.add_job(
            "evacuator.timers:window_elapsed",
            trigger="date",
            run_date=at,
            args=[key],
            id=key,
            replace_existing=True,
        )
        log.info("timer_scheduled", key=key, at=at.isoformat())

    def fire_now(self, key: str) -> bool:
        job = self._scheduler.get_job(key)
        if job is None:
            return False
        job.modify(next_run_time=datetime.now(tz=job.next_run_time.tzinfo))
        self._scheduler.wakeup()
        return True

    def cancel(self, key: str) -> bool:
        try:
            self._scheduler.remove_job(key)
        except JobLookupError:
            return False
        return True

    def pending(self) -> dict[str, datetime]:
        return {job.id: job.next_run_time for job in self._scheduler.get_jobs()}

    def shutdown(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)


class ManualTimers:
    """The in-memory fake: time moves only when a test calls advance(now)."""

    def __init__(self) -> None:
        self._due: dict[str, datetime] = {}
        self._on_fire: OnFire | None = None
        self._lock = threading.Lock()
        self.fired: list[str] = []

    def start(self, on_fire: OnFire) -> None:
        self._on_fire = on_fire

    def schedule(self, key: str, at: datetime) -> None:
        with self._lock:
            self._due[key] = at

    def fire_now(self, key: str) -> bool:
        with self._lock:
            if self._due.pop(key, None) is None:
                return False
        self._fire(key)
        return True

    def cancel(self, key: str) -> bool:
        with self._lock:
            return self._due.pop(key, None) is not None

    def pending(self) -> dict[str, datetime]:
        with self._lock:
            return dict(self._due)

    def advance(self, now: datetime) -> None:
        with self._lock:
            due = sorted((at, key) for key, at in self._due.items() if at <= now)
            for _, key in due:
                del self._due[key]
        for _, key in due:
            self._fire(key)

    def shutdown(self) -> None:
        self._on_fire = None

    def _fire(self, key: str) -> None:
        self.fired.append(key)
        if self._on_fire is not None:
            self._on_fire(key)
