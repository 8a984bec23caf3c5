"""The evacuation service: turns host verdicts into notices, timers and moves; holds no I/O of its own.

An incident, once open, is carried on across restarts from the ledger: a restarted daemon opens no new one
and tells nobody anything twice (docs/moves.md, "Restarts").
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime

import structlog

from evacuator.hypervisor.model import Hypervisor
from evacuator.incident.approval import Approvals, Decision, EvacuationPolicy, Proposal
from evacuator.incident.ledger import Incident, IncidentLedger, LedgerVm
from evacuator.incident.notices_told import IncidentNotices, log_confirm, measured_cost
from evacuator.incident.planned import drain_verdict, return_verdict, windows_for
from evacuator.incident.planner import PlannedMove, WindowPolicy, plan_evacuation
from evacuator.incident.ports import Guard, MoveCosts, Moves, NoGuard, Notifier
from evacuator.incident.reply_policy import PendingEvacuation, ReplyPolicy, latest_deadline
from evacuator.incident.resume import restore_windows
from evacuator.incident.timers import Timers
from evacuator.incident.windows import WindowChange
from evacuator.moves.state import MoveRecord, MoveState
from evacuator.placement.guards import Hold
from monitors.verdicts import HostVerdict, Severity
from notifiers.wire import new_event_id

log = structlog.get_logger(__name__)

Clock = Callable[[], datetime]
_EVACUATE = frozenset({Severity.SEVERE, Severity.FAILED})


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceConfig:
    host: str
    peers: tuple[str, ...]
    window_policy: WindowPolicy
    # The caps on tenants' postpones, when the reply desk answers them: each VM's latest deadline comes
    # from them at planning and never moves. None: no postpones are offered.
    reply_policy: ReplyPolicy | None = None
    # Evacuate, wait for approval, or quarantine only, per severity (incident/approval.py).
    evacuation: EvacuationPolicy = field(default_factory=EvacuationPolicy)


class Service:
    """Reacts to verdicts and timers, and is the EvacuationWindows the reply desk changes; the move engine
    journals and runs the moves, the ledger keeps the incident and what each tenant was told."""

    def __init__(
        self, *, config: ServiceConfig, hypervisor: Hypervisor, notifier: Notifier, timers: Timers,
        engine: Moves, ledger: IncidentLedger, clock: Clock, guard: Guard | None = None,
        costs: MoveCosts | None = None,
    ) -> None:  # fmt: skip
        self._config = config
        self._costs = costs  # None: what a move cost is not told (nor measured)
        self._guard: Guard = guard or NoGuard()
        self._approvals = Approvals(config.evacuation)
        self._withheld: Decision | None = None  # the last decision that opened nothing, logged once
        self._hypervisor = hypervisor
        self._notifier = notifier
        self._timers = timers
        self._engine = engine
        self._ledger = ledger
        self._clock = clock
        self._last_severity: Severity | None = None
        # One incident per sick spell: opened once, closed only when the detector says healthy again and
        # nothing is pending, so a host that stays severe is never re-planned (nor its tenants re-notified).
        self._incident: Incident | None = None
        self._tell = IncidentNotices(ledger=ledger, notifier=notifier, engine=engine)
        self._at_risk: Severity | None = None  # notify: the worst severity the tenants were told this spell

    def start(self) -> None:
        self._timers.start(self.on_timer)
        incident = self._ledger.open_incident()
        if incident is not None:
            self._resume(incident)
        # After the timers: a journaled move whose timer is no longer pending was due when the process
        # stopped (or died between the timer firing and the move starting), so the engine moves it now.
        pending = self._timers.pending()
        resumed = self._engine.start(timer_pending=lambda vm_uuid: vm_uuid in pending, outcomes=self)
        if resumed or pending:
            log.info("evacuation_resumed", host=self._config.host, vm_count=len(resumed) + len(pending))

    def stop(self) -> None:
        self._timers.shutdown()
        self._engine.stop()

    def busy(self) -> bool:
        return self._engine.busy() or bool(self._timers.pending())

    def on_verdict(self, verdict: HostVerdict) -> None:
        if verdict.severity != self._last_severity:
            log.info("host_verdict_changed", host=self._config.host, severity=str(verdict.severity),
                     previous=None if self._last_severity is None else str(self._last_severity),
                     reasons=[r.message for r in verdict.reasons])  # fmt: skip
            self._last_severity = verdict.severity
        decision = self._approvals.decide(verdict)
        if verdict.severity is Severity.HEALTHY:
            self._at_risk = None
        if decision is not Decision.NOTHING and self._incident is None:
            if decision is Decision.EVACUATE:
                self._open_incident(verdict)
            elif decision is Decision.NOTIFY:
                self._tell_at_risk(verdict)
            elif decision is not self._withheld and (verdict.severity in _EVACUATE
                                                     or decision is Decision.AWAIT_APPROVAL):  # fmt: skip
                proposal = self._approvals.awaiting()
                log.warning("evacuation_withheld", host=self._config.host, severity=str(verdict.severity),
                            decision=str(decision),
                            since=None if proposal is None else proposal.since.isoformat())  # fmt: skip
            self._withheld = None if decision is Decision.EVACUATE else decision
        elif verdict.severity is Severity.FAILED and self._incident is not None:
            self._guard.begin(failed=True, on_hold=self._held)  # failed now: never held back any more
        elif self._incident is not None and not self.busy() and (verdict.severity is Severity.HEALTHY
                                                                 or self._incident.planned):
            # A planned incident (a drain, a move back) ends with its moves whatever the verdict: a host
            # that fell sick meanwhile then opens its own incident for what is left, at the next poll.
            self._ledger.close_incident(self._incident.incident_id, self._clock())
            log.info("incident_closed", host=self._config.host, incident_id=self._incident.incident_id)
            self._incident = None
            self._guard.end()

    def _tell_at_risk(self, verdict: HostVerdict) -> None:
        """Notify: once per sick spell, and again when it gets worse (moderate, then severe)."""
        if self._at_risk is not None and verdict.severity.rank <= self._at_risk.rank:
            return
        self._at_risk = verdict.severity
        self._tell.at_risk(verdict, self._hypervisor.list_vms())

    def approve(self) -> str:
        """The admin's `evacuator approve`: the evacuation awaiting approval begins at the next poll."""
        return self._approvals.approve()

    def reject(self) -> str:
        """The admin's `evacuator reject`: no evacuation; the host stays quarantined until healthy again."""
        return self._approvals.reject()

    def reconfigure(self, *, window_policy: WindowPolicy, reply_policy: ReplyPolicy | None,
                    evacuation: EvacuationPolicy) -> None:  # fmt: skip
        """New policies (a reload): the next incident plans with them; an open one keeps its deadlines."""
        self._config = replace(self._config, window_policy=window_policy, reply_policy=reply_policy,
                               evacuation=evacuation)  # fmt: skip
        self._approvals.reconfigure(evacuation)

    def awaiting_approval(self) -> Proposal | None:
        return self._approvals.awaiting()

    def drain(self, *, reason: str, window_seconds: int | None) -> tuple[str, str | None]:
        """The admin drains this (healthy) host for maintenance (`evacuator drain`): every VM moves through
        the tenant contract as for a sick host, the notices saying severity `maintenance` and the admin's
        reason; `window_seconds` is the window of a VM that registered none (a registered one is kept, up
        to the admin's maximum). The outcome ("accepted" or "refused: why") and the incident's id."""
        if self._incident is not None:
            return (f"refused: an evacuation is under way already (incident {self._incident.incident_id}, "
                    f"{self._incident.severity})"), self._incident.incident_id  # fmt: skip
        self._open_incident(drain_verdict(reason, self._clock()), window_seconds=window_seconds)
        incident = self._incident
        return "accepted", None if incident is None else incident.incident_id

    def offer_returns(self, returns: Mapping[str, str]) -> str | None:
        """Moves VMs back to the hosts they were evacuated from, now in service again (`returns`: VM uuid ->
        host; return_to_service.move_back): a planned incident like a drain's, for those VMs only, each
        bound to its host, through the same contract (notice with severity `maintenance` and a `move_back`
        reason, the VM's window, ready and postpone). The incident's id; None while another is open."""
        if self._incident is not None or not returns:
            return None
        self._open_incident(return_verdict(returns, self._clock()), returns=returns)
        return None if self._incident is None else self._incident.incident_id

    def draining(self) -> bool:
        """A drain's incident is open: its moves are pending or running."""
        return self._incident is not None and self._incident.planned

    def _open_incident(self, verdict: HostVerdict, *, window_seconds: int | None = None,
                       returns: Mapping[str, str] | None = None) -> None:  # fmt: skip
        now = self._clock()
        policy = windows_for(self._config.window_policy, verdict.severity, window_seconds)
        plan = plan_evacuation(self._hypervisor.list_vms(), policy, now, returns)
        log.info("evacuation_planned", host=self._config.host, vm_count=len(plan.moves))
        incident = Incident(incident_id=str(uuid.uuid4()), severity=verdict.severity,
                            reasons=verdict.reasons, opened_at=now)
        # The ledger first: it is what a restart carries on from (journaling the moves again if need be),
        # with the event ids the tenants will name.
        self._ledger.open(
            incident,
            [LedgerVm(vm_uuid=m.vm_uuid, vm_name=m.vm_name, tenant=m.tenant, deadline=m.deadline,
                      latest_deadline=self._latest(m, verdict.severity, now), return_to=m.return_to)
             for m in plan.moves],
            {notice.tenant: new_event_id() for notice in plan.notices},
        )  # fmt: skip
        self._incident = incident
        self._guard.begin(failed=incident.severity is Severity.FAILED, on_hold=self._held)
        log.info("incident_opened", host=self._config.host, incident_id=incident.incident_id,
                 severity=str(incident.severity))
        # A failed host must not get its VMs back: a rollback restarts them on the source only if sub-healthy.
        self._engine.plan(plan.moves, may_restart_on_source=verdict.severity is not Severity.FAILED)
        for move in plan.moves:
            self._timers.schedule(move.vm_uuid, move.deadline)
            log.info("evacuation_window_opened", vm_uuid=move.vm_uuid, tenant=move.tenant,
                     window_seconds=move.window_seconds, deadline=move.deadline.isoformat())
            if move.tenant is None:
                log.warning("vm_without_tenant", vm_uuid=move.vm_uuid, vm_name=move.vm_name)
        self._tell.scheduled(incident)
        for move in plan.moves:
            self._engine.mark(move.vm_uuid, MoveState.WAITING)

    def _latest(self, move: PlannedMove, severity: Severity, now: datetime) -> datetime | None:
        policy = self._config.reply_policy
        if policy is None or severity is Severity.FAILED:
            return None
        pending = PendingEvacuation(event_id=None, severity=severity, opened_at=now,
                                    planned_deadline=move.deadline, deadline=move.deadline)
        return max(move.deadline, latest_deadline(pending, policy))

    def _held(self, hold: Hold) -> None:
        incident = self._incident
        if incident is not None:
            self._tell.held(incident, hold)

    def _resume(self, incident: Incident) -> None:
        """Carries on the open incident after a restart (resume.py), and sends every notice never handed to
        the outbox."""
        self._incident = incident
        self._guard.begin(failed=incident.severity is Severity.FAILED, on_hold=self._held)
        restore_windows(incident, host=self._config.host, ledger=self._ledger, engine=self._engine,
                        timers=self._timers)
        self._tell.scheduled(incident)
        for told in self._ledger.tenants(incident.incident_id):
            self._tell.completed_if_settled(incident, told.tenant)

    # --- EvacuationWindows: the reply desk changes a VM's window through these --------------------------

    def deadline(self, vm_uuid: str) -> datetime | None:
        return self._timers.pending().get(vm_uuid)

    def expedite(self, vm_uuid: str) -> WindowChange:
        if vm_uuid not in self._timers.pending():
            return WindowChange.NOT_PENDING
        # Journaled before the timer fires: a restart in between still moves the VM now, not at its deadline.
        self._reschedule(vm_uuid, self._clock())
        return WindowChange.APPLIED if self._timers.fire_now(vm_uuid) else WindowChange.NOT_PENDING

    def postpone(self, vm_uuid: str, deadline: datetime) -> WindowChange:
        # Only the timer that is there is moved: scheduling one for a VM whose window already closed would
        # open a new window after its move started. A timer firing between the two calls comes back once at
        # `deadline`; the engine never moves a VM twice (a queued, running or finished move is not redone).
        if vm_uuid not in self._timers.pending():
            return WindowChange.NOT_PENDING
        self._reschedule(vm_uuid, deadline)  # the ledger first: a restart keeps the granted deadline
        self._timers.schedule(vm_uuid, deadline)
        return WindowChange.APPLIED

    def _reschedule(self, vm_uuid: str, deadline: datetime) -> None:
        record = self._ledger.get(vm_uuid)
        if record is not None:
            self._ledger.reschedule(record, deadline)

    def on_timer(self, vm_uuid: str) -> None:
        log.info("evacuation_window_closed", vm_uuid=vm_uuid)
        if not self._engine.submit(vm_uuid):
            return  # cancelled, already done, or not on this host: nothing starts, so nothing to tell
        vm = self._hypervisor.find_vm(vm_uuid)
        if vm is not None and vm.facts.tenant is not None:
            self._notifier.evacuation_started(
                tenant=vm.facts.tenant, vm_uuid=vm_uuid, vm_name=vm.name
            ).add_done_callback(log_confirm("evacuation_started", vm.facts.tenant))

    # --- Outcomes: the engine reports how each move ended -------------------------------------------------

    def moved(self, record: MoveRecord) -> None:
        cost = measured_cost(self._costs, record)
        if record.tenant is not None and record.destination is not None:
            self._notifier.vm_evacuated(
                tenant=record.tenant, vm_uuid=record.vm_uuid, vm_name=record.vm_name,
                to_host=record.destination, downtime_seconds=cost.downtime_seconds,
                bytes_moved=cost.bytes_moved,
            ).add_done_callback(log_confirm("vm_evacuated", record.tenant))
        self._settle(record, "moved")

    def failed(self, record: MoveRecord, reason: str) -> None:
        if record.tenant is not None:
            self._notifier.evacuation_failed(
                tenant=record.tenant, vm_uuid=record.vm_uuid, vm_name=record.vm_name, reason=reason
            ).add_done_callback(log_confirm("evacuation_failed", record.tenant))
        self._settle(record, "failed")

    def _settle(self, record: MoveRecord, outcome: str) -> None:
        """Journals one VM's outcome in its incident; the tenant's last one sends its evacuation_completed."""
        scheduled = self._ledger.get(record.vm_uuid)
        if scheduled is None or scheduled.outcome is not None:
            return  # not moved by an open incident (the `move` command), or already counted
        self._ledger.settle(scheduled, outcome)
        incident = self._incident
        if incident is None or scheduled.incident_id != incident.incident_id:
            return
        if scheduled.tenant is not None:
            self._tell.completed_if_settled(incident, scheduled.tenant)
        if all(r.outcome is not None for r in self._ledger.records(incident.incident_id)):
            self._guard.end()  # every VM of the incident ended: the permit goes to the next host


