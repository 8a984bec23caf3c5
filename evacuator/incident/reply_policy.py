"""Pure reply policy: what a tenant's ready, postpone or register reply does, or why it is refused."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from evacuator.hypervisor.facts import VmFacts
from monitors.verdicts import Severity
from notifiers.messages import PostponeReply, ReadyReply, RegisterReply
from notifiers.reply_acceptance import TenantReply
from notifiers.wire import WireRejectCode


class ReplyKind(StrEnum):
    READY = "ready"
    POSTPONE = "postpone"
    REGISTER = "register"


class RejectCode(StrEnum):
    """Why a reply was refused: the contract's codes (WireRejectCode), which the tenant is told in
    `reply_rejected`, and NOT_OWNER, which only the service's logs show."""

    MISSING_USER_ID = WireRejectCode.MISSING_USER_ID.value
    WRONG_ROUTING_KEY = WireRejectCode.WRONG_ROUTING_KEY.value
    MALFORMED_REPLY = WireRejectCode.MALFORMED_REPLY.value
    REFUSED_REPLY = WireRejectCode.REFUSED_REPLY.value
    UNKNOWN_VM = WireRejectCode.UNKNOWN_VM.value
    NOT_OWNER = "not_owner"
    NO_PENDING_EVACUATION = WireRejectCode.NO_PENDING_EVACUATION.value
    STALE_EVENT = WireRejectCode.STALE_EVENT.value
    DEADLINE_PASSED = WireRejectCode.DEADLINE_PASSED.value
    NO_POSTPONE_ON_FAILED_HOST = WireRejectCode.NO_POSTPONE_ON_FAILED_HOST.value
    POSTPONE_LIMIT_REACHED = WireRejectCode.POSTPONE_LIMIT_REACHED.value

    @property
    def for_tenant(self) -> WireRejectCode:
        """The code the tenant is told: another tenant's VM looks unknown, so UUIDs cannot be probed."""
        return WireRejectCode.UNKNOWN_VM if self is RejectCode.NOT_OWNER else WireRejectCode(self.value)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplyPolicy:
    """The admin's caps on what tenants may ask for."""

    # Total delay one VM may gain over its planned deadline within one incident.
    max_postpone_seconds: int
    # No VM of a severe host waits longer than this after the incident opened, however often postponed.
    severe_hard_limit_seconds: int
    # The longest preprocessing window a tenant may register.
    max_window_seconds: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplyRequest:
    """A reply the broker vouches for, reduced to what the policy needs."""

    tenant: str
    vm_uuid: str
    kind: ReplyKind
    event_id: str | None = None
    seconds: int | None = None  # postpone: seconds wanted; register: the window


@dataclass(frozen=True, slots=True, kw_only=True)
class PendingEvacuation:
    """A VM's evacuation that has not started: when it was planned for and when it is due now."""

    event_id: str | None  # the scheduled notice's event id; None when unknown (no check)
    severity: Severity
    opened_at: datetime
    planned_deadline: datetime
    deadline: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class Expedite:
    vm_uuid: str


@dataclass(frozen=True, slots=True, kw_only=True)
class NewDeadline:
    vm_uuid: str
    deadline: datetime
    requested_seconds: int
    granted_seconds: int


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreWindow:
    vm_uuid: str
    window_seconds: int
    requested_seconds: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Reject:
    code: RejectCode
    reason: str
    vm_uuid: str | None = None


Decision = Expedite | NewDeadline | StoreWindow | Reject


def request_from(reply: TenantReply) -> ReplyRequest:
    """The policy's view of an accepted wire reply."""
    message = reply.reply
    if isinstance(message, ReadyReply):
        return ReplyRequest(
            tenant=reply.tenant, vm_uuid=message.vm_uuid, kind=ReplyKind.READY, event_id=message.event_id
        )
    if isinstance(message, PostponeReply):
        return ReplyRequest(
            tenant=reply.tenant, vm_uuid=message.vm_uuid, kind=ReplyKind.POSTPONE,
            event_id=message.event_id, seconds=message.postpone_seconds,
        )  # fmt: skip
    assert isinstance(message, RegisterReply)
    return ReplyRequest(
        tenant=reply.tenant, vm_uuid=message.vm_uuid, kind=ReplyKind.REGISTER, seconds=message.window_seconds
    )


def decide_reply(
    request: ReplyRequest,
    *,
    vm: VmFacts | None,
    pending: PendingEvacuation | None,
    now: datetime,
    policy: ReplyPolicy,
) -> Decision:
    """What the reply does; `vm` is None for a VM not on this host, `pending` None when none is due."""
    vm_uuid = request.vm_uuid
    if vm is None:
        return Reject(code=RejectCode.UNKNOWN_VM, reason="no such VM on this host", vm_uuid=vm_uuid)
    if vm.tenant != request.tenant:
        return Reject(code=RejectCode.NOT_OWNER, reason="the VM belongs to another tenant", vm_uuid=vm_uuid)
    if request.kind is ReplyKind.REGISTER:
        wanted = request.seconds or 0
        return StoreWindow(
            vm_uuid=vm_uuid, window_seconds=min(wanted, policy.max_window_seconds), requested_seconds=wanted
        )
    checked = _pending_or_reject(request, pending, now)
    if isinstance(checked, Reject):
        return checked
    if request.kind is ReplyKind.READY:
        return Expedite(vm_uuid=vm_uuid)
    return _postpone(request, checked, policy)


def _pending_or_reject(
    request: ReplyRequest, pending: PendingEvacuation | None, now: datetime
) -> PendingEvacuation | Reject:
    vm_uuid = request.vm_uuid
    if pending is None:
        return no_pending_evacuation(vm_uuid)
    if request.event_id is not None and pending.event_id is not None and request.event_id != pending.event_id:
        return Reject(
            code=RejectCode.STALE_EVENT,
            reason=f"event {request.event_id} is not the pending evacuation {pending.event_id}",
            vm_uuid=vm_uuid,
        )
    if now >= pending.deadline:
        return Reject(
            code=RejectCode.DEADLINE_PASSED,
            reason="the VM's deadline has passed: it is moving",
            vm_uuid=vm_uuid,
        )
    return pending


def no_pending_evacuation(vm_uuid: str) -> Reject:
    """The refusal when the VM has no open window: none was planned, or its move already started."""
    return Reject(
        code=RejectCode.NO_PENDING_EVACUATION, reason="no evacuation of this VM is pending", vm_uuid=vm_uuid
    )


def _postpone(request: ReplyRequest, pending: PendingEvacuation, policy: ReplyPolicy) -> Decision:
    vm_uuid = request.vm_uuid
    if pending.severity is Severity.FAILED:
        return Reject(
            code=RejectCode.NO_POSTPONE_ON_FAILED_HOST, reason="the host has failed", vm_uuid=vm_uuid
        )
    wanted = request.seconds or 0
    limit = latest_deadline(pending, policy)
    deadline = min(pending.deadline + timedelta(seconds=wanted), limit)
    if deadline <= pending.deadline:
        return Reject(
            code=RejectCode.POSTPONE_LIMIT_REACHED,
            reason=f"no postpone past {limit.isoformat()}",
            vm_uuid=vm_uuid,
        )
    granted = int((deadline - pending.deadline).total_seconds())
    return NewDeadline(vm_uuid=vm_uuid, deadline=deadline, requested_seconds=wanted, granted_seconds=granted)


def latest_deadline(pending: PendingEvacuation, policy: ReplyPolicy) -> datetime:
    """The latest a postpone may push the VM's move: the per-VM cap and the severity's hard limit."""
    return min(
        pending.planned_deadline + timedelta(seconds=policy.max_postpone_seconds),
        pending.opened_at + timedelta(seconds=policy.severe_hard_limit_seconds),
    )
