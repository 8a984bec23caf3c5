"""rasdaemon reader: real schema, read-only, incremental by id, surviving absent, locked and rotated files."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from monitors.rasdaemon import RasdaemonReader
from monitors.readings import ErrorKind, SourceState
from tests.unit.monitors.rasdaemon_db import add_event, create_db


def test_absent_database_is_no_data_not_a_failure(tmp_path: Path) -> None:
    batch = RasdaemonReader(tmp_path / "ras-mc_event.db").poll()
    assert batch.status.state is SourceState.ABSENT and batch.events == ()


def test_rows_are_read_once_in_id_order(tmp_path: Path) -> None:
    db = tmp_path / "ras-mc_event.db"
    create_db(db)
    add_event(db, "Corrected", count=2, timestamp="2026-01-01 10:00:00 +0100")
    add_event(db, "Uncorrected", label="DIMM_B1")
    add_event(db, "Info")
    reader = RasdaemonReader(db)
    batch = reader.poll()
    assert [(e.event_id, e.kind, e.count, e.location) for e in batch.events] == [
        ("1", ErrorKind.CORRECTED, 2, "CPU_SrcID#0_MC#0_Chan#1_DIMM#0"),
        ("2", ErrorKind.UNCORRECTED, 1, "DIMM_B1"),
    ]
    assert batch.events[0].at == datetime(2026, 1, 1, 9, 0, tzinfo=UTC)
    assert reader.poll().events == ()
    add_event(db, "Deferred")
    assert [(e.event_id, e.kind) for e in reader.poll().events] == [("4", ErrorKind.UNCORRECTED)]


def test_reader_never_writes(tmp_path: Path) -> None:
    db = tmp_path / "ras-mc_event.db"
    create_db(db)
    db.chmod(0o444)
    before = db.read_bytes()
    assert RasdaemonReader(db).poll().status.state is SourceState.OK
    assert db.read_bytes() == before
    assert not (tmp_path / "ras-mc_event.db-journal").exists()


def test_locked_database_fails_this_poll_and_keeps_its_place(tmp_path: Path) -> None:
    db = tmp_path / "ras-mc_event.db"
    create_db(db)
    add_event(db, "Corrected")
    reader = RasdaemonReader(db)
    reader.poll()
    writer = sqlite3.connect(db, isolation_level=None)
    writer.execute("BEGIN EXCLUSIVE")
    writer.execute("INSERT INTO mc_event (err_type, err_count) VALUES ('Uncorrected', 1)")
    locked = reader.poll()
    assert locked.status.state is SourceState.FAILED and "locked" in locked.status.detail
    writer.execute("COMMIT")
    writer.close()
    assert [e.kind for e in reader.poll().events] == [ErrorKind.UNCORRECTED]


def test_rotated_database_is_read_from_its_first_row(tmp_path: Path) -> None:
    db = tmp_path / "ras-mc_event.db"
    create_db(db)
    for _ in range(3):
        add_event(db, "Corrected")
    reader = RasdaemonReader(db)
    assert len(reader.poll().events) == 3
    db.rename(tmp_path / "ras-mc_event.db.1")
    create_db(db)
    add_event(db, "Uncorrected")
    assert [(e.event_id, e.kind) for e in reader.poll().events] == [("1", ErrorKind.UNCORRECTED)]


def test_database_truncated_in_place_is_read_again(tmp_path: Path) -> None:
    db = tmp_path / "ras-mc_event.db"
    create_db(db)
    for _ in range(3):
        add_event(db, "Corrected")
    reader = RasdaemonReader(db)
    reader.poll()
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM mc_event")
    conn.close()
    add_event(db, "Uncorrected")
    events = reader.poll().events
    assert [e.kind for e in events] == [ErrorKind.UNCORRECTED]


def test_file_that_is_not_a_database_is_a_failure(tmp_path: Path) -> None:
    db = tmp_path / "ras-mc_event.db"
    db.write_text("not sqlite")
    assert RasdaemonReader(db).poll().status.state is SourceState.FAILED
