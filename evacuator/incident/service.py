"""The evacuation service: turns host verdicts into notices, timers and moves; holds no I/O of its own."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import structlog

from evacuator.hypervisor.model import Hypervisor
from evacuator.incident.planner import Plan, PlannedMove, WindowPolicy, plan_evacuation
from evacuator.incident.timers import Timers
from evacuator.incident.windows import WindowChange
from evacuator.moves.state import MoveRecord, MoveState
from monitors.verdicts import HostVerdict, Severity

log = structlog.get_logger(__name__)

Clock = Callable[[], datetime]


class Notifier(Protocol):
    """Tells tenants what happens to their VMs; each call resolves when the broker confirmed it."""

    def evacuation_scheduled(
        self, *, tenant: str, verdict: HostVerdict, moves: Sequence[PlannedMove]
    ) -> Future[datetime]: ...
    def vm_evacuated(self, *, tenant: str, vm_uuid: str, vm_name: str, to_host: str) -> Future[datetime]: ...
    def evacuation_failed(
        self, *, tenant: str, vm_uuid: str, vm_name: str, reason: str
    ) -> Future[datetime]: ...
    def evacuation_started(self, *, tenant: str, vm_uuid: str, vm_name: str) -> Future[datetime]: ...
    def evacuation_completed(
        self, *, tenant: str, moved: Sequence[str], failed: Sequence[str] = ()
    ) -> Future[datetime]: ...


class MoveOutcomes(Protocol):
    """How each move ended; the service is told, and tells the tenant."""

    def moved(self, record: MoveRecord) -> None: ...
    def failed(self, record: MoveRecord, reason: str) -> None: ...


class Moves(Protocol):
    """The journaled move engine as the service drives it (evacuator/moves/engine.py)."""

    def start(
        self, *, timer_pending: Callable[[str], bool], outcomes: MoveOutcomes | None = None
    ) -> tuple[str, ...]: ...
    def stop(self, timeout_seconds: float = 30) -> None: ...
    def busy(self) -> bool: ...
    def plan(self, moves: Iterable[PlannedMove], *, may_restart_on_source: bool) -> None: ...
    def mark(self, vm_uuid: str, state: MoveState) -> None: ...
    def submit(self, vm_uuid: str) -> bool: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceConfig:
    host: str
    peers: tuple[str, ...]
    window_policy: WindowPolicy


_EVACUATE = frozenset({Severity.SEVERE, Severity.FAILED})


class Service:
    """Reacts to verdicts and timers, and is the EvacuationWindows the reply desk changes; the move engine
    journals and runs the moves."""

    def __init__(
        self,
        *,
        config: ServiceConfig,
        hypervisor: Hypervisor,
        notifier: Notifier,
        timers: Timers,
        engine: Moves,
        clock: Clock,
    ) -> None:
        self._config = config
        self._hypervisor = hypervisor
        self._notifier = notifier
        self._timers = timers
        self._engine = engine
        self._clock = clock
        self._last_severity: Severity | None = None
        # One incident per sick spell: opened once, closed only when the detector says healthy again, so a
        # host that stays severe is never re-planned (and its tenants never re-notified) on every poll.
        self._incident_open = False
        # Per tenant: the VMs of this incident not yet moved or failed, and the outcomes so far, so the
        # tenant hears "completed" once, after its last VM. Kept in memory: after a restart the tenant still
        # gets each VM's own outcome, but no summary (the journal does not group moves by incident yet).
        self._outstanding: dict[str, set[str]] = {}
        self._outcomes: dict[str, tuple[list[str], list[str]]] = {}
        self._lock = threading.Lock()

    def start(self) -> None:
        self._timers.start(self.on_timer)
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
            log.info(
                "host_verdict_changed",
                host=self._config.host,
                severity=str(verdict.severity),
                previous=None if self._last_severity is None else str(self._last_severity),
                reasons=[r.message for r in verdict.reasons],
            )
            self._last_severity = verdict.severity
        if verdict.severity in _EVACUATE and not self._incident_open:
            self._incident_open = True
            self._open_incident(verdict)
        elif verdict.severity is Severity.HEALTHY and self._incident_open and not self.busy():
            self._incident_open = False
            log.info("incident_closed", host=self._config.host)

    def _open_incident(self, verdict: HostVerdict) -> None:
        now = self._clock()
        policy = self._config.window_policy
        if verdict.severity is Severity.FAILED:
            policy = WindowPolicy(
                default_window_seconds=0, max_window_seconds=policy.max_window_seconds, immediate=True
            )
        plan = plan_evacuation(self._hypervisor.list_vms(), policy, now)
        log.info("evacuation_planned", host=self._config.host, vm_count=len(plan.moves))
        # A failed host must not get its VMs back: a rollback restarts them on the source only if sub-healthy.
        self._engine.plan(plan.moves, may_restart_on_source=verdict.severity is not Severity.FAILED)
        # Timers first: they are the persistent record of the incident, so a notice that fails to build or
        # send never leaves a VM without its move.
        for move in plan.moves:
            self._timers.schedule(move.vm_uuid, move.deadline)
            log.info(
                "evacuation_window_opened",
                vm_uuid=move.vm_uuid,
                tenant=move.tenant,
                window_seconds=move.window_seconds,
                deadline=move.deadline.isoformat(),
            )
        with self._lock:
            for notice in plan.notices:
                self._outstanding[notice.tenant] = {m.vm_uuid for m in notice.moves}
                self._outcomes[notice.tenant] = ([], [])
        self._notify(plan, verdict)
        for move in plan.moves:
            self._engine.mark(move.vm_uuid, MoveState.WAITING)

    def _notify(self, plan: Plan, verdict: HostVerdict) -> None:
        for notice in plan.notices:
            try:
                future = self._notifier.evacuation_scheduled(
                    tenant=notice.tenant, verdict=verdict, moves=notice.moves
                )
            except Exception as exc:  # one tenant's bad notice must not keep the others uninformed
                log.error("notice_failed", kind="evacuation_scheduled", tenant=notice.tenant, error=str(exc))
                continue
            future.add_done_callback(_log_confirm("evacuation_scheduled", notice.tenant))
            for move in notice.moves:
                self._engine.mark(move.vm_uuid, MoveState.NOTIFIED)
        for move in plan.moves:
            if move.tenant is None:
                log.warning("vm_without_tenant", vm_uuid=move.vm_uuid, vm_name=move.vm_name)

    # --- EvacuationWindows: the reply desk changes a VM's window through these --------------------------

    def deadline(self, vm_uuid: str) -> datetime | None:
        return self._timers.pending().get(vm_uuid)

    def expedite(self, vm_uuid: str) -> WindowChange:
        return WindowChange.APPLIED if self._timers.fire_now(vm_uuid) else WindowChange.NOT_PENDING

    def postpone(self, vm_uuid: str, deadline: datetime) -> WindowChange:
        # Only the timer that is there is moved: scheduling one for a VM whose window already closed would
        # open a new window after its move started. A timer firing between the two calls comes back once at
        # `deadline`; the engine never moves a VM twice (a queued, running or finished move is not redone).
        if vm_uuid not in self._timers.pending():
            return WindowChange.NOT_PENDING
        self._timers.schedule(vm_uuid, deadline)
        return WindowChange.APPLIED

    def on_timer(self, vm_uuid: str) -> None:
        log.info("evacuation_window_closed", vm_uuid=vm_uuid)
        if not self._engine.submit(vm_uuid):
            return  # cancelled, already done, or not on this host: nothing starts, so nothing to tell
        vm = self._hypervisor.find_vm(vm_uuid)
        if vm is not None and vm.facts.tenant is not None:
            self._notifier.evacuation_started(
                tenant=vm.facts.tenant, vm_uuid=vm_uuid, vm_name=vm.name
            ).add_done_callback(_log_confirm("evacuation_started", vm.facts.tenant))

    # --- Outcomes: the engine reports how each move ended -------------------------------------------------

    def moved(self, record: MoveRecord) -> None:
        if record.tenant is not None and record.destination is not None:
            self._notifier.vm_evacuated(
                tenant=record.tenant,
                vm_uuid=record.vm_uuid,
                vm_name=record.vm_name,
                to_host=record.destination,
            ).add_done_callback(_log_confirm("vm_evacuated", record.tenant))
        self._settle(record, moved=True)

    def failed(self, record: MoveRecord, reason: str) -> None:
        if record.tenant is not None:
            self._notifier.evacuation_failed(
                tenant=record.tenant, vm_uuid=record.vm_uuid, vm_name=record.vm_name, reason=reason
            ).add_done_callback(_log_confirm("evacuation_failed", record.tenant))
        self._settle(record, moved=False)

    def _settle(self, record: MoveRecord, *, moved: bool) -> None:
        """Counts one VM's outcome; the tenant's last one sends its evacuation_completed."""
        tenant = record.tenant
        if tenant is None:
            return
        with self._lock:
            outstanding = self._outstanding.get(tenant)
            if outstanding is None or record.vm_uuid not in outstanding:
                return
            outstanding.discard(record.vm_uuid)
            done, failed = self._outcomes[tenant]
            (done if moved else failed).append(record.vm_uuid)
            if outstanding:
                return
            del self._outstanding[tenant]
            del self._outcomes[tenant]
        self._notifier.evacuation_completed(tenant=tenant, moved=done, failed=failed).add_done_callback(
            _log_confirm("evacuation_completed", tenant)
        )


def _log_confirm(kind: str, tenant: str) -> Callable[[Future[datetime]], None]:
    """The publisher logs each confirm; a notice the broker never confirmed is the service's to report."""

    def done(future: Future[datetime]) -> None:
        exc = future.exception()
        if exc is not None:
            log.error("notice_not_confirmed", kind=kind, tenant=tenant, error=str(exc))

    return done
