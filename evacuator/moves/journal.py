"""The move journal: one durable record per VM move plus its history, in SQLite (WAL) under the state dir;
and its read-only reading, for the operator's `evacuator history` while the daemon writes it."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from evacuator.errors import JournalError
from evacuator.moves.state import TERMINAL, MoveRecord, MoveState, Phase, check_transition

_SCHEMA = """
CREATE TABLE IF NOT EXISTS moves (
    vm_uuid TEXT PRIMARY KEY, vm_name TEXT NOT NULL, tenant TEXT, source TEXT NOT NULL, destination TEXT,
    state TEXT NOT NULL, phase TEXT NOT NULL, step TEXT, start_on_destination INTEGER,
    may_restart_on_source INTEGER NOT NULL, deadline TEXT, attempt INTEGER NOT NULL, error TEXT,
    updated_at TEXT NOT NULL, grp TEXT, boot_order INTEGER NOT NULL, priority INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS move_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT, vm_uuid TEXT NOT NULL, state TEXT NOT NULL, phase TEXT NOT NULL,
    step TEXT, destination TEXT, error TEXT, at TEXT NOT NULL
);
"""
# History columns added after the first version: a file an older version wrote gets them when opened for
# writing (NULL in its earlier rows), and the read-only reader takes them as None where they are missing. An
# older version still writes to a newer file: it names the columns it inserts.
_ADDED_HISTORY_COLUMNS = {"start_on_destination": "INTEGER", "bytes_copied": "INTEGER"}
_HISTORY_COLUMNS = ("vm_uuid", "state", "phase", "step", "destination", "error", "at",
                    *_ADDED_HISTORY_COLUMNS)
# The same for the moves' records: `return_to`, a move back's one destination (issue 20).
_ADDED_MOVE_COLUMNS = {"return_to": "TEXT"}
_ADDED_COLUMNS = {"move_history": _ADDED_HISTORY_COLUMNS, "moves": _ADDED_MOVE_COLUMNS}
_COLUMNS = (
    "vm_uuid", "vm_name", "tenant", "source", "destination", "state", "phase", "step", "start_on_destination",
    "may_restart_on_source", "deadline", "attempt", "error", "updated_at", "grp", "boot_order", "priority",
    *_ADDED_MOVE_COLUMNS,
)


class Journal:
    """Thread-safe; every write is one committed transaction that updates the record and appends history."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a move step acts on the hypervisors right after its record is written; the record must
            # survive a power cut as well as a killed process.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            _add_columns(self._db)
        except sqlite3.Error as exc:
            raise JournalError(f"{path}: cannot open the move journal: {exc}") from exc
        self._path = path

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def get(self, vm_uuid: str) -> MoveRecord | None:
        rows = self._query(f"SELECT {', '.join(_COLUMNS)} FROM moves WHERE vm_uuid = ?", (vm_uuid,))
        return _record(rows[0]) if rows else None

    def all(self) -> tuple[MoveRecord, ...]:
        rows = self._query(f"SELECT {', '.join(_COLUMNS)} FROM moves ORDER BY updated_at, vm_uuid", ())
        return tuple(_record(row) for row in rows)

    def unfinished(self) -> tuple[MoveRecord, ...]:
        return tuple(record for record in self.all() if record.state not in TERMINAL)

    def history(self, vm_uuid: str) -> tuple[tuple[MoveState, Phase, str | None], ...]:
        rows = self._query("SELECT state, phase, step FROM move_history WHERE vm_uuid = ? ORDER BY id",
                           (vm_uuid,))
        return tuple((MoveState(state), Phase(phase), step) for state, phase, step in rows)

    def cost(self, vm_uuid: str) -> MoveCost:
        """What the VM's latest move cost it, read from its history rows (once the move is journaled done)."""
        rows = self._query(f"SELECT {', '.join(_HISTORY_COLUMNS)} FROM move_history WHERE vm_uuid = ? "
                           "ORDER BY id", (vm_uuid,))  # fmt: skip
        entries = [_entry(row) for row in rows]
        # The latest move only: an earlier one of the same VM ended with a terminal row.
        begins = [i for i in range(1, len(entries))
                  if entries[i - 1].state in TERMINAL and entries[i].state not in TERMINAL]  # fmt: skip
        latest = entries[begins[-1] if begins else 0:]
        runs = [e.start_on_destination for e in latest if e.start_on_destination is not None]
        done = [e.bytes_copied for e in latest if e.state is MoveState.DONE]
        downtime = downtime_seconds(latest, start_on_destination=runs[-1] if runs else None)
        return MoveCost(downtime_seconds=downtime, bytes_moved=done[-1] if done else None)

    def put(self, record: MoveRecord, *, bytes_copied: int | None = None) -> MoveRecord:
        """Writes the record after checking the transition from the stored one (a new VM starts anywhere).
        `bytes_copied`: the disk bytes a finished move wrote to its destination, kept in its history."""
        with self._lock:
            try:
                row = self._db.execute(
                    "SELECT state FROM moves WHERE vm_uuid = ?", (record.vm_uuid,)).fetchone()
                if row is not None:
                    check_transition(record.vm_uuid, MoveState(row[0]), record.state)
                values = _row(record)
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute(
                    f"INSERT OR REPLACE INTO moves ({', '.join(_COLUMNS)}) "
                    f"VALUES ({', '.join('?' for _ in _COLUMNS)})", values)
                start = record.start_on_destination
                self._db.execute(
                    f"INSERT INTO move_history ({', '.join(_HISTORY_COLUMNS)}) "
                    f"VALUES ({', '.join('?' for _ in _HISTORY_COLUMNS)})",
                    (record.vm_uuid, record.state.value, record.phase.value, record.step, record.destination,
                     record.error, record.updated_at.isoformat(), None if start is None else int(start),
                     bytes_copied))
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise JournalError(f"{self._path}: cannot write the move of {record.vm_uuid}: {exc}") from exc
        return record

    def advance(
        self, record: MoveRecord, state: MoveState, phase: Phase, at: datetime, *,
        bytes_copied: int | None = None, **changes: Any,
    ) -> MoveRecord:
        """Writes `record` moved on to `state`/`phase` (plus any other field changes) and returns it."""
        return self.put(replace(record, state=state, phase=phase, updated_at=at, **changes),
                        bytes_copied=bytes_copied)

    def _query(self, sql: str, params: tuple[object, ...]) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise JournalError(f"{self._path}: cannot read the move journal: {exc}") from exc


def _row(record: MoveRecord) -> tuple[object, ...]:
    values = asdict(record)
    values["grp"] = record.group
    values["state"] = record.state.value
    values["phase"] = record.phase.value
    values["start_on_destination"] = None if record.start_on_destination is None else int(
        record.start_on_destination)
    values["may_restart_on_source"] = int(record.may_restart_on_source)
    values["deadline"] = None if record.deadline is None else record.deadline.isoformat()
    values["updated_at"] = record.updated_at.isoformat()
    return tuple(values[column] for column in _COLUMNS)


def _record(row: tuple[Any, ...]) -> MoveRecord:
    values = dict(zip(_COLUMNS, row, strict=True))
    start = values["start_on_destination"]
    return MoveRecord(
        vm_uuid=values["vm_uuid"], vm_name=values["vm_name"], tenant=values["tenant"],
        source=values["source"],
        destination=values["destination"], state=MoveState(values["state"]), phase=Phase(values["phase"]),
        step=values["step"], start_on_destination=None if start is None else bool(start),
        may_restart_on_source=bool(values["may_restart_on_source"]),
        deadline=None if values["deadline"] is None else datetime.fromisoformat(values["deadline"]),
        attempt=int(values["attempt"]), error=values["error"],
        updated_at=datetime.fromisoformat(values["updated_at"]), group=values["grp"],
        boot_order=int(values["boot_order"]), priority=int(values["priority"]), return_to=values["return_to"],
    )


def _add_columns(db: sqlite3.Connection) -> None:
    """Gives a file an older version wrote the columns added since (once: a second process opening the same
    file at the same time finds them inside its own transaction)."""

    def missing() -> list[tuple[str, str]]:
        found = []
        for table, added in _ADDED_COLUMNS.items():
            present = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
            found += [(table, name) for name in added if name not in present]
        return found

    if not missing():
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        for table, name in missing():
            db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {_ADDED_COLUMNS[table][name]}")
        db.execute("COMMIT")
    except sqlite3.Error:
        db.execute("ROLLBACK")
        raise


@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryEntry:
    """One write of a VM's move as its history keeps it; the fields added later are None in the rows an older
    version wrote (`start_on_destination`: the run state the move keeps; `bytes_copied`: on a `done` row)."""

    vm_uuid: str
    state: MoveState
    phase: Phase
    step: str | None
    destination: str | None
    error: str | None
    at: datetime
    start_on_destination: bool | None = None
    bytes_copied: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class MoveCost:
    """What one finished move cost its VM; None where it was not measured (see downtime_seconds)."""

    downtime_seconds: float | None
    bytes_moved: int | None  # disk bytes the move's last attempt wrote to the destination (a cold move)


def downtime_seconds(entries: Sequence[HistoryEntry], *, start_on_destination: bool | None) -> float | None:
    """One move's downtime from its history rows: the guest is off when its first quiesce step finished and
    runs on the destination when the first start step after its last rollback finished. The first of each:
    a resumed move replays the earlier steps, which find nothing to do and are journaled later; and a rollback
    that tries another host never restarts the VM on its source (one that does ends the move). None for a VM
    that was off before the move (it is never started), a live move (no quiesce: its pause is libvirt's
    switch-over, not journaled), or a move not that far."""
    if not start_on_destination:
        return None
    steps = [e for e in entries if e.state not in TERMINAL]  # an ending row repeats the last step's name
    rolled = [i for i, e in enumerate(steps) if e.state is MoveState.ROLLING_BACK]
    off = next((e for e in steps if e.step == "quiesce" and e.phase is Phase.FINISHED), None)
    running = next((e for e in steps[rolled[-1] + 1 if rolled else 0:]
                    if e.step == "start" and e.phase is Phase.FINISHED), None)  # fmt: skip
    if off is None or running is None or running.at < off.at:
        return None
    return (running.at - off.at).total_seconds()


@dataclass(frozen=True, slots=True, kw_only=True)
class JournalContents:
    """The whole journal at one moment: every VM's latest record and every history row, in writing order."""

    records: tuple[MoveRecord, ...]
    entries: tuple[HistoryEntry, ...]


def read_journal(path: Path) -> JournalContents:
    """Reads the journal read-only, as one snapshot: safe while the daemon writes it (in WAL mode a reader
    sees the last committed write and never blocks the writer), and from a file an older version wrote. It
    never writes a row; SQLite may leave the -wal and -shm files beside a journal no one had open."""
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10,
                             isolation_level=None)
    except sqlite3.Error as exc:
        raise JournalError(f"{path}: cannot open the move journal: {exc}") from exc
    try:
        db.execute("BEGIN")  # one read transaction: the records and the history of the same moment
        wanted = _present(db, "move_history", _HISTORY_COLUMNS)
        columns = _present(db, "moves", _COLUMNS)
        moves = db.execute(f"SELECT {columns} FROM moves ORDER BY updated_at, vm_uuid")
        records = moves.fetchall()
        rows = db.execute(f"SELECT {wanted} FROM move_history ORDER BY id").fetchall()
        db.execute("COMMIT")
    except sqlite3.Error as exc:
        raise JournalError(f"{path}: cannot read the move journal: {exc}") from exc
    finally:
        db.close()
    return JournalContents(records=tuple(_record(row) for row in records),
                           entries=tuple(_entry(row) for row in rows))


def _present(db: sqlite3.Connection, table: str, columns: tuple[str, ...]) -> str:
    """The columns to select from a file that may predate some: NULL for those it lacks."""
    present = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
    return ", ".join(c if c in present else f"NULL AS {c}" for c in columns)


def _entry(row: tuple[Any, ...]) -> HistoryEntry:
    vm_uuid, state, phase, step, destination, error, at, start, copied = row
    return HistoryEntry(
        vm_uuid=vm_uuid, state=MoveState(state), phase=Phase(phase), step=step, destination=destination,
        error=error, at=datetime.fromisoformat(at),
        start_on_destination=None if start is None else bool(start),
        bytes_copied=None if copied is None else int(copied),
    )
