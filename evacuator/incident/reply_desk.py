"""ReplyDesk: gathers the facts for a tenant's reply, asks the pure policy, and carries out its decision."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import replace
from datetime import datetime
from typing import Protocol

import structlog

from evacuator.hypervisor.model import Hypervisor
from evacuator.incident.ledger import ScheduledRecord
from evacuator.incident.reply_limit import (
    DEFAULT_REJECTION_LIMIT,
    RejectionLimit,
    TenantBucket,
    admit,
    is_idle,
)
from evacuator.incident.reply_policy import (
    Expedite,
    NewDeadline,
    PendingEvacuation,
    Reject,
    RejectCode,
    ReplyKind,
    ReplyPolicy,
    ReplyRequest,
    StoreWindow,
    decide_reply,
    no_pending_evacuation,
    request_from,
)
from evacuator.incident.windows import EvacuationWindows, WindowChange
from notifiers.reply_acceptance import RejectedDelivery, TenantReply
from notifiers.wire import WireRejectCode

log = structlog.get_logger(__name__)

# Past this many tenants' buckets, those that are idle again are forgotten (each is a few dozen bytes; only
# broker users can have one, but a desk runs for months).
_MAX_BUCKETS = 1024


class ReplyNotifier(Protocol):
    """The notices the desk sends back to the tenant."""

    def evacuation_updated(
        self, *, tenant: str, cause: str, vms: Sequence[ScheduledRecord]
    ) -> Future[datetime]: ...
    def reply_rejected(
        self, *, tenant: str, code: WireRejectCode, reason: str, in_reply_to: str | None = ...,
        vm_uuid: str | None = ...,
    ) -> Future[datetime]: ...


class ScheduledRecords(Protocol):
    """What each tenant was told about its VMs in the open incident (the IncidentLedger)."""

    def get(self, vm_uuid: str) -> ScheduledRecord | None: ...


class WindowStore(Protocol):
    """Where a tenant-registered window is kept: the VM's own definition (LibvirtHost.store_window)."""

    def store_window(self, vm_uuid: str, window_seconds: int) -> None: ...


class ReplyDesk:
    """Carries out replies: ready closes the VM's window now, postpone moves its closing and tells the tenant
    the new deadline, register stores the window; every refusal is logged and sent back as reply_rejected,
    up to `rejection_limit` per tenant: past it, refusals are counted and reported by
    `reply_rejections_suppressed` at most once an interval.

    Used from the reply consumer's thread only (its buckets are not locked)."""

    def __init__(
        self, *, hypervisor: Hypervisor, windows: EvacuationWindows, ledger: ScheduledRecords,
        notifier: ReplyNotifier, window_store: WindowStore, policy: ReplyPolicy,
        clock: Callable[[], datetime], rejection_limit: RejectionLimit = DEFAULT_REJECTION_LIMIT,
    ) -> None:  # fmt: skip
        self._hypervisor = hypervisor
        self._windows = windows
        self._ledger = ledger
        self._notifier = notifier
        self._window_store = window_store
        self._policy = policy
        self._clock = clock
        self._limit = rejection_limit
        self._buckets: dict[str, TenantBucket] = {}

    def reconfigure(self, policy: ReplyPolicy) -> None:
        """New caps on postpones (a reload): the next reply is decided with them (one reference, swapped)."""
        self._policy = policy

    def on_reply(self, reply: TenantReply) -> None:
        request = request_from(reply)
        vm = self._hypervisor.find_vm(request.vm_uuid)
        facts = None if vm is None else vm.facts
        owner = None if facts is None else facts.tenant
        if reply.broadcast and not self._for_this_host(reply, request, owner):
            return
        decision = decide_reply(
            request, vm=facts, pending=self._pending(request.vm_uuid), now=self._clock(), policy=self._policy
        )
        if isinstance(decision, Expedite):
            self._expedite(reply, decision)
        elif isinstance(decision, NewDeadline):
            self._postpone(reply, request, decision)
        elif isinstance(decision, StoreWindow):
            self._store(reply, request, decision)
        else:
            self._refuse(reply, decision)

    def on_rejected(self, rejected: RejectedDelivery) -> None:
        """A delivery refused before parsing, answered to whom the broker vouches for (`answer_to`)."""
        # Counted against whoever published it, answered or not: the first word of a routing key is its
        # publisher's user (the tenants' topic permissions), and a flood of silent refusals floods the log.
        sender = rejected.answer_to or rejected.user_id or rejected.routing_key.partition(".")[0]
        if not self._admit(sender):
            return
        log.warning("reply_rejected", reason=rejected.reason, user_id=rejected.user_id,
                    routing_key=rejected.routing_key, answer_to=rejected.answer_to)  # fmt: skip
        if rejected.answer_to:
            self._send_rejection(rejected.answer_to, rejected.code, rejected.reason, rejected.message_id,
                                 None)

    def _for_this_host(self, reply: TenantReply, request: ReplyRequest, owner: str | None) -> bool:
        """A reply routed to every host is this host's only when it holds the tenant's VM; the others stay
        silent (none may tell the tenant about a VM, or the lack of one). Only a register may come so."""
        if owner != reply.tenant:
            log.info("reply_not_for_this_host", tenant=reply.tenant, vm_uuid=request.vm_uuid)
            return False
        if request.kind is not ReplyKind.REGISTER:
            reason = f"only register may go to every host; {request.kind} goes to {reply.tenant}.{reply.host}"
            wrong = Reject(code=RejectCode.WRONG_ROUTING_KEY, reason=reason, vm_uuid=request.vm_uuid)
            self._refuse(reply, wrong)
            return False
        return True

    def _pending(self, vm_uuid: str) -> PendingEvacuation | None:
        record = self._ledger.get(vm_uuid)
        deadline = self._windows.deadline(vm_uuid)
        if deadline is None or record is None:
            return None
        return PendingEvacuation(
            event_id=record.event_id, severity=record.severity, opened_at=record.opened_at,
            planned_deadline=record.planned_deadline, deadline=deadline,
        )  # fmt: skip

    def _expedite(self, reply: TenantReply, decision: Expedite) -> None:
        # The window may have closed since the policy looked (its timer fired): then nothing is pending.
        if self._windows.expedite(decision.vm_uuid) is WindowChange.NOT_PENDING:
            self._refuse(reply, no_pending_evacuation(decision.vm_uuid))
            return
        log.info("tenant_ready", tenant=reply.tenant, vm_uuid=decision.vm_uuid)
        self._updated(reply.tenant, "expedited", decision.vm_uuid, self._clock())

    def _postpone(self, reply: TenantReply, request: ReplyRequest, decision: NewDeadline) -> None:
        if self._windows.postpone(decision.vm_uuid, decision.deadline) is WindowChange.NOT_PENDING:
            self._refuse(reply, no_pending_evacuation(decision.vm_uuid))
            return
        log.info("tenant_postponed", deadline=decision.deadline.isoformat(),
                 granted_seconds=decision.granted_seconds, requested_seconds=decision.requested_seconds,
                 **_context(reply, request))  # fmt: skip
        self._updated(reply.tenant, "postponed", decision.vm_uuid, decision.deadline)

    def _updated(self, tenant: str, cause: str, vm_uuid: str, deadline: datetime) -> None:
        """Tells the tenant the VM's new deadline, with what else it was told (its latest deadline)."""
        record = self._ledger.get(vm_uuid)
        if record is not None:
            updated = replace(record, deadline=deadline)
            self._notifier.evacuation_updated(tenant=tenant, cause=cause, vms=(updated,))

    def _store(self, reply: TenantReply, request: ReplyRequest, decision: StoreWindow) -> None:
        try:
            self._window_store.store_window(decision.vm_uuid, decision.window_seconds)
        except Exception as exc:  # libvirt refused: the tenant hears it, the next reply may succeed
            log.error("window_not_stored", error=str(exc), **_context(reply, request))
            reason = "the window could not be stored; try again"
            self._refuse(reply, Reject(code=RejectCode.REFUSED_REPLY, reason=reason, vm_uuid=request.vm_uuid))
            return
        log.info("tenant_window_registered", window_seconds=decision.window_seconds,
                 requested_seconds=decision.requested_seconds, **_context(reply, request))  # fmt: skip

    def _refuse(self, reply: TenantReply, reject: Reject) -> None:
        if not self._admit(reply.tenant):
            return
        log.warning("reply_refused", tenant=reply.tenant, vm_uuid=reject.vm_uuid, reason=str(reject.code),
                    detail=reject.reason)  # fmt: skip
        # Another tenant's VM is reported as unknown, with the unknown VM's words, so UUIDs cannot be probed.
        reason = "no such VM on this host" if reject.code is RejectCode.NOT_OWNER else reject.reason
        self._send_rejection(reply.tenant, reject.code.for_tenant, reason, reply.message_id, reject.vm_uuid)

    def _send_rejection(
        self, tenant: str, code: WireRejectCode, reason: str, message_id: str | None, vm_uuid: str | None
    ) -> None:
        try:
            self._notifier.reply_rejected(
                tenant=tenant, code=code, reason=reason or code, in_reply_to=message_id, vm_uuid=vm_uuid
            )
        except Exception as exc:  # e.g. a user id that cannot be a tenant name: logged, never raised
            log.warning("reply_rejection_not_sent", tenant=tenant, error=str(exc))

    def _admit(self, sender: str) -> bool:
        """Whether this refusal of `sender`'s reply is logged and answered, or only counted."""
        now = self._clock()
        admission = admit(self._buckets.get(sender), now=now, limit=self._limit)
        self._buckets[sender] = admission.bucket
        if admission.report:
            log.warning("reply_rejections_suppressed", tenant=sender, suppressed=admission.report,
                        interval_seconds=self._limit.report_interval_seconds)  # fmt: skip
        if len(self._buckets) > _MAX_BUCKETS:
            for name, bucket in list(self._buckets.items()):
                if is_idle(bucket, now=now, limit=self._limit):
                    del self._buckets[name]
        return admission.answer


def _context(reply: TenantReply, request: ReplyRequest) -> dict[str, str]:
    return {"tenant": reply.tenant, "vm_uuid": request.vm_uuid, "reply_type": str(request.kind)}
