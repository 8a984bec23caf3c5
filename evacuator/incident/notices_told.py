"""What the incident service tells each tenant about a whole incident, once: the scheduled notice (again
after a restart only if it was never handed over), the guards' holds, and the completed summary after the
tenant's last VM (docs/moves.md, "Restarts"). Per-VM notices (started, evacuated, failed) are the service's;
what a move cost, which vm_evacuated tells, is read here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from datetime import datetime

import structlog

from evacuator.errors import JournalError
from evacuator.hypervisor.model import VmInfo
from evacuator.incident.ledger import Incident, IncidentLedger
from evacuator.incident.ports import MoveCosts, Moves, Notifier
from evacuator.moves.journal import MoveCost
from evacuator.moves.state import MoveRecord, MoveState
from evacuator.placement.guards import Hold
from monitors.verdicts import HostVerdict

log = structlog.get_logger(__name__)


class IncidentNotices:
    """Thread-safe: the poll loop, the timers and the movers' outcomes all reach it."""

    def __init__(self, *, ledger: IncidentLedger, notifier: Notifier, engine: Moves) -> None:
        self._ledger = ledger
        self._notifier = notifier
        self._engine = engine
        self._lock = threading.Lock()  # one tenant's last outcome sends its evacuation_completed once

    def scheduled(self, incident: Incident) -> None:
        """Hands each tenant's scheduled notice to the notifier, once: after a restart, only those never
        handed over are, with the event id and deadlines the ledger holds."""
        records = self._ledger.records(incident.incident_id)
        for told in self._ledger.tenants(incident.incident_id):
            if told.scheduled_sent:
                continue
            vms = [r for r in records if r.tenant == told.tenant]
            try:
                future = self._notifier.evacuation_scheduled(
                    tenant=told.tenant, event_id=told.event_id, incident=incident, vms=vms)
            except Exception as exc:  # one tenant's bad notice must not keep the others uninformed
                log.error("notice_failed", kind="evacuation_scheduled", tenant=told.tenant, error=str(exc))
                continue
            self._ledger.scheduled_sent(incident.incident_id, told.tenant)
            future.add_done_callback(log_confirm("evacuation_scheduled", told.tenant))
            for vm in vms:
                self._engine.mark(vm.vm_uuid, MoveState.NOTIFIED)

    def at_risk(self, verdict: HostVerdict, vms: Sequence[VmInfo]) -> None:
        """The host is sick and its policy says notify: each tenant with VMs here hears which (host_at_risk),
        and nothing moves."""
        tenants = sorted({vm.facts.tenant for vm in vms if vm.facts.tenant is not None})
        for tenant in tenants:
            mine = [(vm.uuid, vm.name) for vm in vms if vm.facts.tenant == tenant]
            try:
                future = self._notifier.host_at_risk(tenant=tenant, verdict=verdict, vms=mine)
            except Exception as exc:  # one tenant's bad notice must not keep the others uninformed
                log.error("notice_failed", kind="host_at_risk", tenant=tenant, error=str(exc))
                continue
            future.add_done_callback(log_confirm("host_at_risk", tenant))
        log.warning("host_at_risk_told", severity=str(verdict.severity), tenants=tenants,
                    reasons=[r.message for r in verdict.reasons])  # fmt: skip

    def held(self, incident: Incident, hold: Hold) -> None:
        """The guards hold this host's moves back: each tenant with VMs still to move is told why."""
        records = [r for r in self._ledger.records(incident.incident_id) if r.outcome is None]
        for tenant in sorted({r.tenant for r in records if r.tenant is not None}):
            vms = [r for r in records if r.tenant == tenant]
            try:
                future = self._notifier.evacuation_updated(tenant=tenant, cause="held_back", vms=vms,
                                                           hold=str(hold.cause))  # fmt: skip
            except Exception as exc:  # one tenant's bad notice must not keep the others uninformed
                log.error("notice_failed", kind="evacuation_updated", tenant=tenant, error=str(exc))
                continue
            future.add_done_callback(log_confirm("evacuation_updated", tenant))

    def completed_if_settled(self, incident: Incident, tenant: str) -> None:
        """The tenant's evacuation_completed, once, after its last VM's outcome."""
        with self._lock:
            told = next((t for t in self._ledger.tenants(incident.incident_id) if t.tenant == tenant), None)
            vms = [r for r in self._ledger.records(incident.incident_id) if r.tenant == tenant]
            if told is None or told.completed_sent or not vms or any(r.outcome is None for r in vms):
                return
            moved = [r.vm_uuid for r in vms if r.outcome == "moved"]
            failed = [r.vm_uuid for r in vms if r.outcome == "failed"]
            future = self._notifier.evacuation_completed(tenant=tenant, moved=moved, failed=failed)
            self._ledger.completed_sent(incident.incident_id, tenant)
        future.add_done_callback(log_confirm("evacuation_completed", tenant))


def log_confirm(kind: str, tenant: str) -> Callable[[Future[datetime]], None]:
    """The publisher logs each confirm; a notice the broker never confirmed is the service's to report."""

    def done(future: Future[datetime]) -> None:
        exc = future.exception()
        if exc is not None:
            log.error("notice_not_confirmed", kind=kind, tenant=tenant, error=str(exc))

    return done


def measured_cost(costs: MoveCosts | None, record: MoveRecord) -> MoveCost:
    """What the finished move cost its VM (None where not measured), logged as `move_cost_measured`, the
    event the downtime histogram reads. Never raises: the tenant hears that its VM moved in any case."""
    cost = MoveCost(downtime_seconds=None, bytes_moved=None)
    if costs is None:
        return cost
    try:
        cost = costs.cost(record.vm_uuid)
    except JournalError as exc:
        log.warning("move_cost_unread", vm_uuid=record.vm_uuid, error=str(exc))
    log.info("move_cost_measured", vm_uuid=record.vm_uuid, tenant=record.tenant,
             downtime_seconds=cost.downtime_seconds, bytes_moved=cost.bytes_moved)  # fmt: skip
    return cost
