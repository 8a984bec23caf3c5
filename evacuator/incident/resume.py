"""An open incident carried on after a restart: the journal's moves and the windows' timers put back as the
ledger says they were (docs/moves.md, "Restarts"). The notices are the service's (service.py)."""

from __future__ import annotations

import structlog

from evacuator.incident.ledger import Incident, IncidentLedger
from evacuator.incident.ports import Moves
from evacuator.incident.timers import Timers
from evacuator.moves.state import PENDING, Phase
from monitors.verdicts import Severity

log = structlog.get_logger(__name__)

# A restored timer within this of the ledger's deadline is the same timer (the store keeps float seconds).
_SAME_DEADLINE_SECONDS = 0.5


def restore_windows(incident: Incident, *, host: str, ledger: IncidentLedger, engine: Moves,
                    timers: Timers) -> None:
    """Journals the incident's moves the process died before journaling, and gives each pending window its
    timer back at the ledger's deadline (a timer lost in a crash, or a postpone or ready journaled just
    before it). A move past its window, or ended, is left to the engine, which resumes it itself."""
    records = ledger.records(incident.incident_id)
    log.info("incident_resumed", host=host, incident_id=incident.incident_id,
             severity=str(incident.severity), opened_at=incident.opened_at.isoformat(),
             vm_count=len(records))  # fmt: skip
    pending = timers.pending()
    unjournaled = [r for r in records if r.outcome is None and engine.record(r.vm_uuid) is None]
    if unjournaled:  # the process died between the ledger and the journal
        engine.plan(unjournaled, may_restart_on_source=incident.severity is not Severity.FAILED)
    for record in records:
        move = engine.record(record.vm_uuid)
        if record.outcome is not None or move is None or move.state not in PENDING \
                or move.phase is Phase.DUE:  # fmt: skip
            continue
        timer = pending.get(record.vm_uuid)
        if timer is None or abs((timer - record.deadline).total_seconds()) > _SAME_DEADLINE_SECONDS:
            timers.schedule(record.vm_uuid, record.deadline)
            log.info("evacuation_window_restored", vm_uuid=record.vm_uuid,
                     deadline=record.deadline.isoformat(),
                     timer=None if timer is None else timer.isoformat())
