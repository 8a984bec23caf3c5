"""An APScheduler 3 job store on the standard library's sqlite3: persistent timers without SQLAlchemy.

APScheduler's own SQLAlchemyJobStore pulls SQLAlchemy (about 12 MiB resident) into a daemon that runs on
every hypervisor, for one table with three columns. This store keeps the same contract (BaseJobStore) and
the same on-disk idea: one row per job, its state pickled by APScheduler's own Job.__getstate__.
"""

from __future__ import annotations

import pickle
import sqlite3
import threading
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog
from apscheduler.job import Job
from apscheduler.jobstores.base import BaseJobStore, ConflictingIdError, JobLookupError
from apscheduler.util import datetime_to_utc_timestamp, utc_timestamp_to_datetime

log = structlog.get_logger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS evacuation_timers (
    id TEXT PRIMARY KEY,
    next_run_time REAL,
    job_state BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS evacuation_timers_next ON evacuation_timers (next_run_time);
"""


class SqliteJobStore(BaseJobStore):  # type: ignore[misc]  # APScheduler ships no type hints
    """Jobs in one SQLite table; WAL so a reader never waits for the scheduler's writes.

    `renamed_targets` maps a job function's old textual reference to its new one: rows that name an old one
    are rewritten when the store starts, before any is restored (APScheduler imports the function named in
    each row, and a job whose function cannot be imported is dropped).
    """

    def __init__(self, path: Path, *, renamed_targets: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self._path = path
        self._renamed_targets = dict(renamed_targets or {})
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    def start(self, scheduler: Any, alias: str) -> None:
        super().start(scheduler, alias)
        self._path.parent.mkdir(parents=True, exist_ok=True)
        # The scheduler calls the store from its own thread and from callers' threads: one connection,
        # serialised by the lock, with autocommit so every change is durable when the call returns.
        db = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
        _rename_targets(db, self._renamed_targets)
        self._db = db

    def shutdown(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            # The scheduler's thread may look for due jobs once more while shutdown() closes the store:
            # a closed store has nothing due (the rows stay on disk for the next start).
            if self._db is None:
                return []
            return self._db.execute(sql, args).fetchall()

    def _change(self, sql: str, args: tuple[Any, ...]) -> int:
        with self._lock:
            if self._db is None:
                raise RuntimeError("the job store is not started")
            return self._db.execute(sql, args).rowcount

    def lookup_job(self, job_id: str) -> Job | None:
        rows = self._query("SELECT id, job_state FROM evacuation_timers WHERE id = ?", (job_id,))
        jobs = self._restore(rows)
        return jobs[0] if jobs else None

    def get_due_jobs(self, now: datetime) -> list[Job]:
        rows = self._query(
            "SELECT id, job_state FROM evacuation_timers WHERE next_run_time <= ? ORDER BY next_run_time",
            (datetime_to_utc_timestamp(now),),
        )
        return self._restore(rows)

    def get_next_run_time(self) -> datetime | None:
        rows = self._query("SELECT MIN(next_run_time) FROM evacuation_timers WHERE next_run_time IS NOT NULL")
        return utc_timestamp_to_datetime(rows[0][0]) if rows and rows[0][0] is not None else None

    def get_all_jobs(self) -> list[Job]:
        rows = self._query("SELECT id, job_state FROM evacuation_timers ORDER BY next_run_time")
        jobs = self._restore(rows)
        self._fix_paused_jobs_sorting(jobs)
        return jobs

    def add_job(self, job: Job) -> None:
        try:
            self._change(
                "INSERT INTO evacuation_timers (id, next_run_time, job_state) VALUES (?, ?, ?)",
                (job.id, datetime_to_utc_timestamp(job.next_run_time), _dump(job)),
            )
        except sqlite3.IntegrityError as exc:
            raise ConflictingIdError(job.id) from exc

    def update_job(self, job: Job) -> None:
        changed = self._change(
            "UPDATE evacuation_timers SET next_run_time = ?, job_state = ? WHERE id = ?",
            (datetime_to_utc_timestamp(job.next_run_time), _dump(job), job.id),
        )
        if changed == 0:
            raise JobLookupError(job.id)

    def remove_job(self, job_id: str) -> None:
        if self._change("DELETE FROM evacuation_timers WHERE id = ?", (job_id,)) == 0:
            raise JobLookupError(job_id)

    def remove_all_jobs(self) -> None:
        self._change("DELETE FROM evacuation_timers", ())

    def _restore(self, rows: list[tuple[Any, ...]]) -> list[Job]:
        jobs: list[Job] = []
        broken: list[str] = []
        for job_id, blob in rows:
            try:
                state = pickle.loads(blob)
                state["jobstore"] = self
                job = Job.__new__(Job)
                job.__setstate__(state)
                job._scheduler = self._scheduler
                job._jobstore_alias = self._alias
                jobs.append(job)
            except Exception:  # a job APScheduler cannot rebuild would block the scheduler forever
                self._logger.exception("Unable to restore job %r: removing it", job_id)
                broken.append(job_id)
        for job_id in broken:
            self._change("DELETE FROM evacuation_timers WHERE id = ?", (job_id,))
        return jobs


def _dump(job: Job) -> bytes:
    return pickle.dumps(job.__getstate__(), pickle.HIGHEST_PROTOCOL)


def _rename_targets(db: sqlite3.Connection, renamed: Mapping[str, str]) -> None:
    """Rewrites, in one transaction, every stored job whose function reference was renamed."""
    if not renamed:
        return
    rows = db.execute("SELECT id, job_state FROM evacuation_timers").fetchall()
    updates = []
    for job_id, blob in rows:
        state = pickle.loads(blob)
        target = state.get("func") if isinstance(state, dict) else None
        if isinstance(target, str) and target in renamed:
            state["func"] = renamed[target]
            updates.append((pickle.dumps(state, pickle.HIGHEST_PROTOCOL), job_id))
    if not updates:
        return
    with db:  # commits, or rolls back on an error; the BEGIN is explicit (autocommit connection)
        db.execute("BEGIN IMMEDIATE")
        db.executemany("UPDATE evacuation_timers SET job_state = ? WHERE id = ?", updates)
    log.info("timer_targets_renamed", job_count=len(updates))
