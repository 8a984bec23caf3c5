"""Builds rasdaemon databases with the real 0.6.8 `mc_event` schema for the reader tests."""

from __future__ import annotations

import sqlite3
from pathlib import Path

MC_EVENT_DDL = (
    "CREATE TABLE IF NOT EXISTS mc_event (id INTEGER PRIMARY KEY, timestamp TEXT, err_count INTEGER, "
    "err_type TEXT, err_msg TEXT, label TEXT, mc INTEGER, top_layer INTEGER, middle_layer INTEGER, "
    "lower_layer INTEGER, address INTEGER, grain INTEGER, syndrome INTEGER, driver_detail TEXT)"
)
MCE_RECORD_DDL = (
    "CREATE TABLE IF NOT EXISTS mce_record (id INTEGER PRIMARY KEY, timestamp TEXT, mcgcap INTEGER, "
    "mcgstatus INTEGER, status INTEGER, addr INTEGER, misc INTEGER, ip INTEGER, tsc INTEGER, "
    "walltime INTEGER, cpu INTEGER, cpuid INTEGER, apicid INTEGER, socketid INTEGER, cs INTEGER, "
    "bank INTEGER, cpuvendor INTEGER, "
    "bank_name TEXT, error_msg TEXT, mcgstatus_msg TEXT, mcistatus_msg TEXT, mcastatus_msg TEXT, "
    "user_action TEXT, mc_location TEXT)"
)


def create_db(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute(MC_EVENT_DDL)
        db.execute(MCE_RECORD_DDL)
    db.close()


def add_event(
    path: Path,
    err_type: str,
    *,
    label: str = "CPU_SrcID#0_MC#0_Chan#1_DIMM#0",
    count: int = 1,
    timestamp: str = "2026-01-01 00:00:00 +0000",
) -> None:
    with sqlite3.connect(path) as db:
        db.execute(
            "INSERT INTO mc_event (timestamp, err_count, err_type, err_msg, label, mc, top_layer, "
            "middle_layer, lower_layer, address, grain, syndrome, driver_detail) "
            "VALUES (?, ?, ?, ?, ?, 0, 0, 1, -1, 305419896, 64, 0, 'bank:7 row:1234')",
            (timestamp, count, err_type, "memory read error", label),
        )
    db.close()
