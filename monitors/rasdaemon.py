"""Read new memory-error rows from rasdaemon's SQLite database, read-only and incrementally by id."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

import structlog

from monitors.readings import (
    ErrorKind,
    MemoryErrorEvent,
    SensorFault,
    SourceState,
    SourceStatus,
)

log = structlog.get_logger(__name__)

DEFAULT_DB_PATH = Path("/var/lib/rasdaemon/ras-mc_event.db")
SOURCE = "rasdaemon"
MAX_ROWS_PER_POLL = 10_000
_BUSY_TIMEOUT_SECONDS = 0.2
_KINDS = {
    "corrected": ErrorKind.CORRECTED,
    "uncorrected": ErrorKind.UNCORRECTED,
    "fatal": ErrorKind.UNCORRECTED,
    # AMD "deferred" errors are uncorrected data that was poisoned instead of crashing the host.
    "deferred": ErrorKind.UNCORRECTED,
}
_QUERY = (
    "SELECT id, timestamp, err_count, err_type, err_msg, label, mc, top_layer, middle_layer, lower_layer "
    "FROM mc_event WHERE id > ? ORDER BY id LIMIT ?"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class RasdaemonBatch:
    """The rows added since the previous poll, and how reading went."""

    events: tuple[MemoryErrorEvent, ...]
    status: SourceStatus
    faults: tuple[SensorFault, ...] = ()


class RasdaemonReader:
    """Remembers the last row id and the file identity, so a rotated database is read from its start."""

    def __init__(self, db_path: Path = DEFAULT_DB_PATH) -> None:
        self._db_path = db_path
        self._last_id = 0
        self._identity: tuple[int, int] | None = None

    @property
    def last_id(self) -> int:
        return self._last_id

    def poll(self) -> RasdaemonBatch:
        """New events since the last poll; absent, locked or broken databases are statuses, not crashes."""
        try:
            stat = os.stat(self._db_path)
        except FileNotFoundError:
            log.debug("rasdaemon_absent", path=str(self._db_path))
            return RasdaemonBatch(events=(), status=SourceStatus(source=SOURCE, state=SourceState.ABSENT))
        except OSError as exc:
            return self._failed(f"cannot stat database: {exc.strerror}")
        identity = (stat.st_dev, stat.st_ino)
        if self._identity is not None and identity != self._identity:
            log.info("rasdaemon_database_rotated", path=str(self._db_path))
            self._last_id = 0
        self._identity = identity
        try:
            rows = self._fetch()
        except sqlite3.Error as exc:
            return self._failed(f"cannot read database: {exc}")
        events = tuple(e for row in rows if (e := _event(row)) is not None)
        if rows and isinstance(rows[-1][0], int):
            self._last_id = rows[-1][0]
        return RasdaemonBatch(events=events, status=SourceStatus(source=SOURCE, state=SourceState.OK))

    def _fetch(self) -> list[tuple[object, ...]]:
        uri = f"file:{quote(str(self._db_path))}?mode=ro"
        connection = sqlite3.connect(uri, uri=True, timeout=_BUSY_TIMEOUT_SECONDS)
        try:
            (max_id,) = connection.execute("SELECT COALESCE(MAX(id), 0) FROM mc_event").fetchone()
            if isinstance(max_id, int) and max_id < self._last_id:
                # Same file, fewer rows: rasdaemon's database was recreated in place.
                log.info("rasdaemon_database_rotated", path=str(self._db_path))
                self._last_id = 0
            return list(connection.execute(_QUERY, (self._last_id, MAX_ROWS_PER_POLL)).fetchall())
        finally:
            connection.close()

    def _failed(self, reason: str) -> RasdaemonBatch:
        log.warning("source_failed", source=SOURCE, path=str(self._db_path), reason=reason)
        return RasdaemonBatch(
            events=(),
            status=SourceStatus(source=SOURCE, state=SourceState.FAILED, detail=reason),
            faults=(SensorFault(path=str(self._db_path), reason=reason),),
        )


def _event(row: tuple[object, ...]) -> MemoryErrorEvent | None:
    """A row as an event; "Info" and unknown types carry no error and are dropped."""
    row_id, timestamp, err_count, err_type, err_msg, label, mc, top, middle, lower = row
    kind = _KINDS.get(str(err_type).strip().lower())
    if kind is None:
        return None
    location = str(label) if label else f"mc{mc}/{top}.{middle}.{lower}"
    return MemoryErrorEvent(
        source=SOURCE,
        event_id=str(row_id),
        location=location,
        kind=kind,
        count=_count(err_count),
        at=_timestamp(timestamp),
        message=f"{err_type} error: {err_msg}" if err_msg else f"{err_type} error",
    )


def _count(value: object) -> int:
    return value if isinstance(value, int) and value > 0 else 1


def _timestamp(value: object) -> datetime | None:
    """rasdaemon writes local time with its offset, e.g. `2024-03-01 10:23:45 +0100`."""
    if not isinstance(value, str):
        return None
    for pattern in ("%Y-%m-%d %H:%M:%S %z", "%Y-%m-%d %H:%M:%S.%f %z"):
        try:
            return datetime.strptime(value.strip(), pattern)
        except ValueError:
            continue
    return None
