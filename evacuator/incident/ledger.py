"""The incident ledger: the open incident and, per VM, what its tenant was told, durable in SQLite.

Everything a restarted daemon needs to carry on the same incident rather than open a new one lives here: the
incident (severity, reasons, when it opened), each tenant's scheduled event id and whether its scheduled and
completed notices were handed to the outbox, and per VM its planned, current and latest deadline, the
postpones granted and how its move ended. The timers fire windows; this ledger says when they must (a timer
lost in a crash is scheduled again from here, docs/moves.md "Restarts").
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from evacuator.errors import JournalError
from evacuator.incident.admin import MAINTENANCE_SOURCE
from monitors.verdicts import Reason, Severity

_SCHEMA = """
CREATE TABLE IF NOT EXISTS incidents (
    incident_id TEXT PRIMARY KEY, severity TEXT NOT NULL, reasons TEXT NOT NULL, opened_at TEXT NOT NULL,
    closed_at TEXT
);
CREATE TABLE IF NOT EXISTS tenant_notices (
    incident_id TEXT NOT NULL, tenant TEXT NOT NULL, event_id TEXT NOT NULL,
    scheduled_sent INTEGER NOT NULL DEFAULT 0, completed_sent INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (incident_id, tenant)
);
CREATE TABLE IF NOT EXISTS scheduled_vms (
    incident_id TEXT NOT NULL, vm_uuid TEXT NOT NULL, tenant TEXT, vm_name TEXT NOT NULL,
    planned_deadline TEXT NOT NULL, deadline TEXT NOT NULL, latest_deadline TEXT,
    postponed_seconds INTEGER NOT NULL DEFAULT 0, outcome TEXT,
    PRIMARY KEY (incident_id, vm_uuid)
);
"""
# Added after the first version: a ledger an older version wrote gets it when opened (NULL in its rows).
_ADDED_VM_COLUMNS = {"return_to": "TEXT"}
_VM_COLUMNS = ("v.vm_uuid, v.tenant, v.vm_name, v.planned_deadline, v.deadline, v.latest_deadline, "
               "v.postponed_seconds, v.outcome, n.event_id, i.severity, i.opened_at, i.incident_id, "
               "v.return_to")
_VM_FROM = ("scheduled_vms v JOIN incidents i ON i.incident_id = v.incident_id "
            "LEFT JOIN tenant_notices n ON n.incident_id = v.incident_id AND n.tenant = v.tenant")


@dataclass(frozen=True, slots=True, kw_only=True)
class Incident:
    """A sick spell of this host, open from its first severe (or failed) verdict until the service closes
    it."""

    incident_id: str
    severity: Severity
    reasons: tuple[Reason, ...]
    opened_at: datetime

    @property
    def planned(self) -> bool:
        """An admin's drain (`evacuator drain`), not a sick spell: its one reason is the admin's."""
        return bool(self.reasons) and all(r.source == MAINTENANCE_SOURCE for r in self.reasons)


@dataclass(frozen=True, slots=True, kw_only=True)
class LedgerVm:
    """A VM as the incident plans it: its window's end now, and the latest a postpone may push it."""

    vm_uuid: str
    vm_name: str
    tenant: str | None
    deadline: datetime
    latest_deadline: datetime | None
    return_to: str | None = None  # a move back's one destination


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduledRecord:
    """What the tenant was told about one VM, and where its window stands now."""

    incident_id: str
    vm_uuid: str
    event_id: str | None
    tenant: str | None
    vm_name: str
    severity: Severity
    opened_at: datetime
    planned_deadline: datetime
    deadline: datetime
    latest_deadline: datetime | None
    postponed_seconds: int
    outcome: str | None  # "moved" or "failed" once the move ended
    return_to: str | None = None  # a move back's one destination


@dataclass(frozen=True, slots=True, kw_only=True)
class TenantNotice:
    """One tenant's part of an incident: its scheduled event, and which of its notices the outbox holds."""

    tenant: str
    event_id: str
    scheduled_sent: bool
    completed_sent: bool


class IncidentLedger:
    """Thread-safe; every change is one committed transaction. `path` None: in memory (tests)."""

    def __init__(self, path: Path | None = None) -> None:
        self._lock = threading.Lock()
        self._name = ":memory:" if path is None else str(path)
        try:
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self._name, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a tenant may act on what it was told right after; that must survive a power cut too.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            present = {row[1] for row in self._db.execute("PRAGMA table_info(scheduled_vms)")}
            for name, kind in _ADDED_VM_COLUMNS.items():
                if name not in present:  # one daemon owns the ledger: no other writer races this
                    self._db.execute(f"ALTER TABLE scheduled_vms ADD COLUMN {name} {kind}")
        except sqlite3.Error as exc:
            raise JournalError(f"{self._name}: cannot open the incident ledger: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> IncidentLedger:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- the incident -------------------------------------------------------------------------------------

    def open(
        self, incident: Incident, vms: Sequence[LedgerVm], event_ids: Mapping[str, str]
    ) -> None:
        """Records a new incident, its VMs and each tenant's scheduled event id, in one transaction."""
        reasons = json.dumps([_reason_row(r) for r in incident.reasons])
        self._write([
            ("INSERT INTO incidents (incident_id, severity, reasons, opened_at) VALUES (?, ?, ?, ?)",
             (incident.incident_id, incident.severity.value, reasons, incident.opened_at.isoformat())),
            *(("INSERT INTO tenant_notices (incident_id, tenant, event_id) VALUES (?, ?, ?)",
               (incident.incident_id, tenant, event_id)) for tenant, event_id in sorted(event_ids.items())),
            *(("INSERT INTO scheduled_vms (incident_id, vm_uuid, tenant, vm_name, planned_deadline, "
               "deadline, latest_deadline, return_to) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
               (incident.incident_id, vm.vm_uuid, vm.tenant, vm.vm_name, vm.deadline.isoformat(),
                vm.deadline.isoformat(), _text(vm.latest_deadline), vm.return_to)) for vm in vms),
        ])  # fmt: skip

    def open_incident(self) -> Incident | None:
        rows = self._query("SELECT incident_id, severity, reasons, opened_at FROM incidents "
                           "WHERE closed_at IS NULL ORDER BY opened_at DESC LIMIT 1", ())
        if not rows:
            return None
        incident_id, severity, reasons, opened_at = rows[0]
        return Incident(incident_id=incident_id, severity=Severity(severity),
                        reasons=tuple(_reason(row) for row in json.loads(reasons)),
                        opened_at=datetime.fromisoformat(opened_at))

    def close_incident(self, incident_id: str, at: datetime) -> None:
        self._write([("UPDATE incidents SET closed_at = ? WHERE incident_id = ?",
                      (at.isoformat(), incident_id))])

    # --- what tenants were told ---------------------------------------------------------------------------

    def tenants(self, incident_id: str) -> tuple[TenantNotice, ...]:
        rows = self._query("SELECT tenant, event_id, scheduled_sent, completed_sent FROM tenant_notices "
                           "WHERE incident_id = ? ORDER BY tenant", (incident_id,))
        return tuple(TenantNotice(tenant=tenant, event_id=event, scheduled_sent=bool(scheduled),
                                  completed_sent=bool(completed))
                     for tenant, event, scheduled, completed in rows)

    def event_for(self, tenant: str) -> str | None:
        """The event id of the open incident's scheduled notice to `tenant` (what its replies may name)."""
        rows = self._query("SELECT n.event_id FROM tenant_notices n JOIN incidents i USING (incident_id) "
                           "WHERE i.closed_at IS NULL AND n.tenant = ? ORDER BY i.opened_at DESC LIMIT 1",
                           (tenant,))
        return rows[0][0] if rows else None

    def scheduled_sent(self, incident_id: str, tenant: str) -> None:
        self._mark(incident_id, tenant, "scheduled_sent")

    def completed_sent(self, incident_id: str, tenant: str) -> None:
        self._mark(incident_id, tenant, "completed_sent")

    # --- the VMs ------------------------------------------------------------------------------------------

    def get(self, vm_uuid: str) -> ScheduledRecord | None:
        """The VM's record in the open incident, None when it is in none."""
        rows = self._query(f"SELECT {_VM_COLUMNS} FROM {_VM_FROM} "
                           "WHERE i.closed_at IS NULL AND v.vm_uuid = ? ORDER BY i.opened_at DESC LIMIT 1",
                           (vm_uuid,))
        return _record(rows[0]) if rows else None

    def records(self, incident_id: str) -> tuple[ScheduledRecord, ...]:
        rows = self._query(f"SELECT {_VM_COLUMNS} FROM {_VM_FROM} WHERE v.incident_id = ? "
                           "ORDER BY v.vm_name, v.vm_uuid", (incident_id,))
        return tuple(_record(row) for row in rows)

    def reschedule(self, record: ScheduledRecord, deadline: datetime) -> ScheduledRecord:
        """The VM's window now ends at `deadline` (a postpone, or a ready: now); postpones are summed."""
        postponed = record.postponed_seconds + max(0, round((deadline - record.deadline).total_seconds()))
        self._write([("UPDATE scheduled_vms SET deadline = ?, postponed_seconds = ? "
                      "WHERE incident_id = ? AND vm_uuid = ?",
                      (deadline.isoformat(), postponed, record.incident_id, record.vm_uuid))])
        return replace(record, deadline=deadline, postponed_seconds=postponed)

    def settle(self, record: ScheduledRecord, outcome: str) -> None:
        self._write([("UPDATE scheduled_vms SET outcome = ? WHERE incident_id = ? AND vm_uuid = ?",
                      (outcome, record.incident_id, record.vm_uuid))])

    # --- SQLite -------------------------------------------------------------------------------------------

    def _mark(self, incident_id: str, tenant: str, column: str) -> None:
        self._write([(f"UPDATE tenant_notices SET {column} = 1 WHERE incident_id = ? AND tenant = ?",
                      (incident_id, tenant))])

    def _write(self, statements: Sequence[tuple[str, tuple[object, ...]]]) -> None:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                for sql, args in statements:
                    self._db.execute(sql, args)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise JournalError(f"{self._name}: cannot write the incident ledger: {exc}") from exc

    def _query(self, sql: str, args: tuple[object, ...]) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise JournalError(f"{self._name}: cannot read the incident ledger: {exc}") from exc


def _reason_row(reason: Reason) -> dict[str, object]:
    return {"source": reason.source, "sensor": reason.sensor, "value": reason.value,
            "threshold": reason.threshold, "unit": reason.unit, "message": reason.message,
            "severity": reason.severity.value}


def _reason(row: dict[str, Any]) -> Reason:
    return Reason(source=row["source"], sensor=row["sensor"], value=row["value"], threshold=row["threshold"],
                  unit=row["unit"], message=row["message"], severity=Severity(row["severity"]))


def _text(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat()


def _at(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _record(row: tuple[Any, ...]) -> ScheduledRecord:
    (vm_uuid, tenant, vm_name, planned, deadline, latest, postponed, outcome, event_id, severity, opened_at,
     incident_id, return_to) = row
    return ScheduledRecord(
        incident_id=incident_id, vm_uuid=vm_uuid, event_id=event_id, tenant=tenant, vm_name=vm_name,
        severity=Severity(severity), opened_at=datetime.fromisoformat(opened_at),
        planned_deadline=datetime.fromisoformat(planned), deadline=datetime.fromisoformat(deadline),
        latest_deadline=_at(latest), postponed_seconds=int(postponed), outcome=outcome, return_to=return_to,
    )

