"""The Timers seam over APScheduler 3: a BackgroundScheduler whose jobs persist in a SQLite job store."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import structlog
from apscheduler.events import EVENT_JOB_EXECUTED, JobExecutionEvent
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler

from evacuator.errors import TimerError
from evacuator.incident.jobstore import SqliteJobStore
from evacuator.incident.timers import OnFire

log = structlog.get_logger(__name__)

# What each stored job names as its function. The store keeps this text, so renaming or moving the function
# needs the old text in RENAMED_TARGETS: a job whose function cannot be imported is dropped at restore.
WINDOW_ELAPSED = "evacuator.incident.scheduler:window_elapsed"
RENAMED_TARGETS = {
    # Up to 0.1.0 the timers lived in the flat evacuator/timers.py.
    "evacuator.timers:window_elapsed": WINDOW_ELAPSED,
}


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
        self._store = SqliteJobStore(db_path, renamed_targets=RENAMED_TARGETS)
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
            WINDOW_ELAPSED,
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
