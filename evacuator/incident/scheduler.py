"""The Timers seam over APScheduler 3: one in-memory date job per VM, fired on the scheduler's thread.

Nothing is persisted here: the incident ledger holds every deadline, and the service schedules the timers
again from it at start-up (docs/moves.md, "Restarts"), so no job state is ever unpickled. A timer store left
by a version that persisted its jobs (`timers.sqlite`) is read once at start for its ids and run times only
(plain columns, never the pickled job state) and then set aside.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import structlog
from apscheduler.jobstores.base import JobLookupError
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.background import BackgroundScheduler

from evacuator.errors import TimerError
from evacuator.incident.timers import OnFire

log = structlog.get_logger(__name__)


class ApschedulerTimers:
    """Timers in an APScheduler 3 BackgroundScheduler with an in-memory job store. `legacy_store`: a
    `timers.sqlite` an earlier version left, whose timers are taken over at start."""

    def __init__(self, *, legacy_store: Path | None = None) -> None:
        self._legacy_store = legacy_store
        self._on_fire: OnFire | None = None
        self._scheduler = BackgroundScheduler(
            jobstores={"default": MemoryJobStore()},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone="UTC",
        )

    def start(self, on_fire: OnFire) -> None:
        self._on_fire = on_fire
        try:
            self._scheduler.start()
        except Exception as exc:  # APScheduler raises many kinds; all mean "no timers"
            raise TimerError(f"cannot start the timers: {exc}") from exc
        if self._legacy_store is not None and self._legacy_store.exists():
            self._take_over(self._legacy_store)

    def schedule(self, key: str, at: datetime) -> None:
        if self._on_fire is None:
            raise TimerError("schedule() before start()")
        # A stable id with replace_existing: scheduling a VM's window again replaces it (STYLE habit 10).
        self._scheduler.add_job(self._on_fire, trigger="date", run_date=at, args=[key], id=key,
                                replace_existing=True)  # fmt: skip
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
        if not self._scheduler.running:
            return
        # The scheduler's thread removes a job it has just fired after the fact; stopped under it, it raises
        # JobLookupError there. So: paused between two of its rounds (each holds this lock), emptied, stopped.
        with self._scheduler._jobstores_lock:
            self._scheduler.pause()
        self._scheduler.remove_all_jobs()
        self._scheduler.shutdown(wait=False)

    def _take_over(self, path: Path) -> None:
        """Schedules the timers of an earlier version's job store, then renames it so this happens once."""
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
                rows = db.execute("SELECT id, next_run_time FROM evacuation_timers "
                                  "WHERE next_run_time IS NOT NULL").fetchall()
        except sqlite3.Error as exc:
            raise TimerError(f"{path}: cannot read the earlier timer store: {exc}") from exc
        for key, run_at in rows:
            self.schedule(str(key), datetime.fromtimestamp(float(run_at), UTC))
        path.rename(path.with_name(path.name + ".taken-over"))
        log.info("timers_taken_over", store=str(path), timer_count=len(rows))
