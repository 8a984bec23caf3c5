"""Translates the service's plan and results into tenant wire notices, handed to a NoticeSink."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future
from datetime import datetime
from typing import Protocol

from evacuator.incident.ledger import ScheduledLedger
from evacuator.incident.planner import PlannedMove
from evacuator.incident.reply_policy import PendingEvacuation, ReplyPolicy, latest_deadline
from monitors.verdicts import HostVerdict, Severity
from notifiers import messages as wire
from notifiers.topology import reply_routing_key
from notifiers.wire import ReplyType


def _scheduled_vm(move: PlannedMove) -> wire.ScheduledVm:
    return wire.ScheduledVm(vm_uuid=move.vm_uuid, vm_name=move.vm_name, deadline=move.deadline)


class NoticeSink(Protocol):
    """Where TenantNotifier hands notices: the NoticePublisher, or the OutboxPublisher in front of it."""

    def ensure_tenant_queue(self, tenant: str) -> Future[None]: ...
    def publish(self, tenant: str, host: str, notice: wire.Notice) -> Future[datetime]: ...


def scheduled_notice(
    *,
    host: str,
    tenant: str,
    verdict: HostVerdict,
    moves: Sequence[PlannedMove],
    replies_exchange: str,
    reply_policy: ReplyPolicy | None = None,
    now: datetime | None = None,
) -> wire.EvacuationScheduled:
    """The notice one tenant gets when its VMs on `host` are about to move.

    With a reply policy (the ReplyDesk answers replies) a non-failed host also offers postpone and register,
    and each VM says how late a postpone may push it (`latest_deadline`).
    """
    severity = str(verdict.severity)
    if severity not in ("moderate", "severe", "failed"):
        raise ValueError(f"no evacuation notice for a {severity} verdict")
    return wire.EvacuationScheduled(
        host=host,
        tenant=tenant,
        severity=severity,  # type: ignore[arg-type]  # narrowed by the check above
        reasons=tuple(
            wire.Reason(
                source=r.source,
                sensor=r.sensor,
                value=r.value,
                threshold=r.threshold,
                unit=r.unit,
                message=r.message,
            )
            for r in verdict.reasons
        ),
        vms=tuple(_offered_vm(m, verdict.severity, reply_policy, now) for m in moves),
        allowed_replies=_allowed_replies(verdict.severity, reply_policy),
        reply_exchange=replies_exchange,
        reply_routing_key=reply_routing_key(tenant, host),
    )


def _allowed_replies(severity: Severity, policy: ReplyPolicy | None) -> tuple[ReplyType, ...]:
    if policy is None:
        return ("ready",)
    return ("ready", "register") if severity is Severity.FAILED else ("ready", "postpone", "register")


def _offered_vm(
    move: PlannedMove, severity: Severity, policy: ReplyPolicy | None, now: datetime | None
) -> wire.ScheduledVm:
    if policy is None or now is None or severity is Severity.FAILED:
        return _scheduled_vm(move)
    pending = PendingEvacuation(
        event_id=None,
        severity=severity,
        opened_at=now,
        planned_deadline=move.deadline,
        deadline=move.deadline,
    )
    return wire.ScheduledVm(
        vm_uuid=move.vm_uuid, vm_name=move.vm_name, deadline=move.deadline,
        latest_deadline=max(move.deadline, latest_deadline(pending, policy)),
    )  # fmt: skip


class TenantNotifier:
    """The Notifier as tenant wire notices, handed to a NoticeSink (which does the AMQP): declares each
    tenant's queue before its first notice, and links every later notice to the tenant's last scheduled event
    (`scheduled_event_id`)."""

    def __init__(
        self,
        *,
        publisher: NoticeSink,
        host: str,
        replies_exchange: str,
        clock: Callable[[], datetime],
        ledger: ScheduledLedger | None = None,
        reply_policy: ReplyPolicy | None = None,
    ) -> None:
        self._publisher = publisher
        self._reply_policy = reply_policy
        # What each tenant was told per VM, for the ReplyDesk to judge replies against.
        self.ledger = ledger if ledger is not None else ScheduledLedger()
        self._host = host
        self._replies_exchange = replies_exchange
        self._clock = clock
        self._declared: set[str] = set()
        self._scheduled: dict[str, str] = {}

    def _send(self, tenant: str, notice: wire.Notice) -> Future[datetime]:
        # Both jobs run in order on the publisher's one thread, so the queue exists before the publish; the
        # publisher itself declares the known queues again after a reconnect.
        if tenant not in self._declared:
            self._publisher.ensure_tenant_queue(tenant)
            self._declared.add(tenant)
        return self._publisher.publish(tenant, self._host, notice)

    def evacuation_scheduled(
        self, *, tenant: str, verdict: HostVerdict, moves: Sequence[PlannedMove]
    ) -> Future[datetime]:
        notice = scheduled_notice(
            host=self._host,
            tenant=tenant,
            verdict=verdict,
            moves=moves,
            replies_exchange=self._replies_exchange,
            reply_policy=self._reply_policy,
            now=self._clock(),
        )
        self._scheduled[tenant] = notice.event_id
        self.ledger.record(
            event_id=notice.event_id, tenant=tenant, severity=verdict.severity, opened_at=self._clock(),
            moves=moves,
        )  # fmt: skip
        return self._send(tenant, notice)

    def scheduled_event_id(self, tenant: str) -> str | None:
        """The event id of the last scheduled notice sent to `tenant` (what its replies may name)."""
        return self._scheduled.get(tenant)

    def evacuation_updated(
        self, *, tenant: str, cause: str, moves: Sequence[PlannedMove]
    ) -> Future[datetime]:
        notice = wire.EvacuationUpdated(
            tenant=tenant, host=self._host, cause=cause,  # type: ignore[arg-type]  # validated by the model
            vms=tuple(_scheduled_vm(m) for m in moves),
            at=self._clock(), scheduled_event_id=self._scheduled.get(tenant),
        )  # fmt: skip
        return self._send(tenant, notice)

    def evacuation_started(self, *, tenant: str, vm_uuid: str, vm_name: str) -> Future[datetime]:
        notice = wire.EvacuationStarted(
            tenant=tenant, host=self._host, vm_uuid=vm_uuid, vm_name=vm_name, at=self._clock(),
            scheduled_event_id=self._scheduled.get(tenant),
        )  # fmt: skip
        return self._send(tenant, notice)

    def vm_evacuated(self, *, tenant: str, vm_uuid: str, vm_name: str, to_host: str) -> Future[datetime]:
        notice = wire.VmEvacuated(
            tenant=tenant, vm_uuid=vm_uuid, vm_name=vm_name, from_host=self._host, to_host=to_host,
            at=self._clock(), scheduled_event_id=self._scheduled.get(tenant),
        )  # fmt: skip
        return self._send(tenant, notice)

    def evacuation_completed(
        self, *, tenant: str, moved: Sequence[str], failed: Sequence[str] = ()
    ) -> Future[datetime]:
        notice = wire.EvacuationCompleted(
            tenant=tenant, host=self._host, moved_vm_uuids=tuple(moved), failed_vm_uuids=tuple(failed),
            at=self._clock(), scheduled_event_id=self._scheduled.get(tenant),
        )  # fmt: skip
        return self._send(tenant, notice)

    def evacuation_cancelled(self, *, tenant: str, vm_uuids: Sequence[str], reason: str) -> Future[datetime]:
        notice = wire.EvacuationCancelled(
            tenant=tenant, host=self._host, vm_uuids=tuple(vm_uuids), reason=reason, at=self._clock(),
            scheduled_event_id=self._scheduled.get(tenant),
        )  # fmt: skip
        return self._send(tenant, notice)

    def evacuation_failed(self, *, tenant: str, vm_uuid: str, vm_name: str, reason: str) -> Future[datetime]:
        notice = wire.EvacuationFailed(
            tenant=tenant, host=self._host, vm_uuid=vm_uuid, vm_name=vm_name, reason=reason, at=self._clock(),
            scheduled_event_id=self._scheduled.get(tenant),
        )  # fmt: skip
        return self._send(tenant, notice)

    def reply_rejected(
        self,
        *,
        tenant: str,
        code: str,
        reason: str,
        in_reply_to: str | None = None,
        vm_uuid: str | None = None,
    ) -> Future[datetime]:
        notice = wire.ReplyRejected(
            tenant=tenant, host=self._host, code=code, reason=reason[:4096] or code,
            in_reply_to=None if in_reply_to is None else in_reply_to[:255], vm_uuid=vm_uuid, at=self._clock(),
        )  # fmt: skip
        return self._send(tenant, notice)
