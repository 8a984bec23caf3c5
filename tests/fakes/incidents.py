"""An incident as the service leaves it in the ledger, for tests of what reads the ledger (the reply desk)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from evacuator.incident.ledger import Incident, IncidentLedger, LedgerVm
from monitors.verdicts import Reason, Severity

HOT = Reason(source="hwmon", sensor="coretemp/temp1", value=97.0, threshold=90.0, unit="celsius",
             message="hot")


def opened(
    vms: Sequence[LedgerVm], event_ids: Mapping[str, str], *, severity: Severity, opened_at: datetime,
    ledger: IncidentLedger | None = None, incident_id: str = "incident-1",
) -> IncidentLedger:
    """`ledger` (default: a new one in memory) holding one open incident with these VMs and event ids."""
    book = IncidentLedger() if ledger is None else ledger
    incident = Incident(incident_id=incident_id, severity=severity, reasons=(HOT,), opened_at=opened_at)
    book.open(incident, vms, event_ids)
    return book
