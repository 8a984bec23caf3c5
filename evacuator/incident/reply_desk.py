"""ReplyDesk: gathers the facts for a tenant's reply, asks the pure policy, and applies its decision."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import structlog

from evacuator.hypervisor.model import Hypervisor
from evacuator.incident.planner import PlannedMove
from evacuator.incident.reply_policy import (
    Expedite,
    NewDeadline,
    PendingEvacuation,
    Reject,
    RejectCode,
    ReplyPolicy,
    StoreWindow,
    decide_reply,
    request_from,
)
from evacuator.incident.timers import Timers
from monitors.verdicts import Severity
from notifiers.replies import RejectedDelivery, TenantReply

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduledRecord:
    """What the tenant was told about one VM: the event to name in replies and the planned deadline."""

    event_id: str | None
    tenant: str
    vm_name: str
    severity: Severity
    opened_at: datetime
    planned_deadline: datetime


class ScheduledLedger:
    """Per VM, the last scheduled notice sent; filled by the notifier, read by the desk (thread-safe)."""

    def __init__(self) -> None:
        self._records: dict[str, ScheduledRecord] = {}
        self._lock = threading.Lock()

    def record(
        self, *, event_id: str | None, tenant: str, severity: Severity, opened_at: datetime,
        moves: Sequence[PlannedMove],
    ) -> None:  # fmt: skip
        with self._lock:
            for move in moves:
                self._records[move.vm_uuid] = ScheduledRecord(
                    event_id=event_id, tenant=tenant, vm_name=move.vm_name, severity=severity,
                    opened_at=opened_at, planned_deadline=move.deadline,
                )  # fmt: skip

    def get(self, vm_uuid: str) -> ScheduledRecord | None:
        with self._lock:
            return self._records.get(vm_uuid)


class ReplyNotifier(Protocol):
    """The notices the desk sends back to the tenant."""

    def evacuation_updated(
        self, *, tenant: str, cause: str, moves: Sequence[PlannedMove]
    ) -> Future[datetime]: ...
    def reply_rejected(
        self, *, tenant: str, code: str, reason: str, in_reply_to: str | None = ..., vm_uuid: str | None = ...
    ) -> Future[datetime]: ...


Expediter = Callable[[str, str], str | None]
"""(tenant, vm_uuid) -> None when the VM's timer fired now, else a refusal reason (Service.on_reply)."""
WindowStore = Callable[[str, int], None]
"""(vm_uuid, window_seconds): writes the window into the VM's libvirt metadata."""


class ReplyDesk:
    """Applies replies: ready fires the VM's timer, postpone reschedules it and tells the tenant the new
    deadline, register stores the window, and every refusal is logged and sent back as reply_rejected."""

    def __init__(
        self, *, hypervisor: Hypervisor, timers: Timers, ledger: ScheduledLedger, notifier: ReplyNotifier,
        expedite: Expediter, store_window: WindowStore, policy: ReplyPolicy, clock: Callable[[], datetime],
    ) -> None:  # fmt: skip
        self._hypervisor = hypervisor
        self._timers = timers
        self._ledger = ledger
        self._notifier = notifier
        self._expedite = expedite
        self._store_window = store_window
        self._policy = policy
        self._clock = clock

    def on_reply(self, reply: TenantReply) -> None:
        request = request_from(reply)
        vm = self._hypervisor.find_vm(request.vm_uuid)
        record = self._ledger.get(request.vm_uuid)
        deadline = self._timers.pending().get(request.vm_uuid)
        pending = None
        if deadline is not None and record is not None:
            pending = PendingEvacuation(
                event_id=record.event_id, severity=record.severity, opened_at=record.opened_at,
                planned_deadline=record.planned_deadline, deadline=deadline,
            )  # fmt: skip
        facts = None if vm is None else vm.facts
        decision = decide_reply(request, vm=facts, pending=pending, now=self._clock(), policy=self._policy)
        context = {"tenant": reply.tenant, "vm_uuid": request.vm_uuid, "reply_type": str(request.kind)}
        if isinstance(decision, Expedite):
            refused = self._expedite(reply.tenant, decision.vm_uuid)
            if refused is not None:
                known = refused in RejectCode.__members__.values()
                code = RejectCode(refused) if known else RejectCode.REFUSED_REPLY
                self._refuse(reply, Reject(code=code, reason=refused, vm_uuid=decision.vm_uuid))
        elif isinstance(decision, NewDeadline):
            self._timers.schedule(decision.vm_uuid, decision.deadline)
            log.info("tenant_postponed", deadline=decision.deadline.isoformat(),
                     granted_seconds=decision.granted_seconds, requested_seconds=decision.requested_seconds,
                     **context)  # fmt: skip
            name = record.vm_name if record is not None else decision.vm_uuid
            move = PlannedMove(vm_uuid=decision.vm_uuid, vm_name=name, tenant=reply.tenant,
                               window_seconds=0, deadline=decision.deadline)  # fmt: skip
            self._notifier.evacuation_updated(tenant=reply.tenant, cause="postponed", moves=(move,))
        elif isinstance(decision, StoreWindow):
            try:
                self._store_window(decision.vm_uuid, decision.window_seconds)
            except Exception as exc:  # libvirt refused: the tenant hears it, the next reply may succeed
                log.error("window_not_stored", error=str(exc), **context)
                reason = "the window could not be stored; try again"
                self._refuse(
                    reply, Reject(code=RejectCode.REFUSED_REPLY, reason=reason, vm_uuid=decision.vm_uuid)
                )
                return
            log.info("tenant_window_registered", window_seconds=decision.window_seconds,
                     requested_seconds=decision.requested_seconds, **context)  # fmt: skip
        else:
            self._refuse(reply, decision)

    def on_rejected(self, rejected: RejectedDelivery) -> None:
        """A delivery refused before parsing: answer only a broker-vouched sender (user_id present)."""
        log.warning("reply_rejected", reason=rejected.reason, user_id=rejected.user_id)
        if rejected.user_id:
            self._send_rejection(rejected.user_id, rejected.code, rejected.reason, rejected.message_id, None)

    def _refuse(self, reply: TenantReply, reject: Reject) -> None:
        log.warning("reply_refused", tenant=reply.tenant, vm_uuid=reject.vm_uuid, reason=str(reject.code),
                    detail=reject.reason)  # fmt: skip
        # Another tenant's VM is reported as unknown, with the unknown VM's words, so UUIDs cannot be probed.
        reason = "no such VM on this host" if reject.code is RejectCode.NOT_OWNER else reject.reason
        self._send_rejection(reply.tenant, reject.code.for_tenant, reason, reply.message_id, reject.vm_uuid)

    def _send_rejection(
        self, tenant: str, code: str, reason: str, message_id: str | None, vm_uuid: str | None
    ) -> None:
        try:
            self._notifier.reply_rejected(
                tenant=tenant, code=code, reason=reason or code, in_reply_to=message_id, vm_uuid=vm_uuid
            )
        except Exception as exc:  # e.g. a user id that cannot be a tenant name: logged, never raised
            log.warning("reply_rejection_not_sent", tenant=tenant, error=str(exc))
