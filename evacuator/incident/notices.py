"""Translates the incident and the moves' results into tenant wire notices, handed to a NoticeSink."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future
from datetime import datetime
from typing import Protocol

from evacuator.incident.ledger import Incident, ScheduledRecord
from monitors.verdicts import HostVerdict, Reason, Severity
from notifiers import messages as wire
from notifiers.topology import reply_routing_key
from notifiers.wire import ReplyType, WireRejectCode


def _scheduled_vm(record: ScheduledRecord) -> wire.ScheduledVm:
    """The VM as the tenant sees it: when its window ends now, and the latest a postpone may push it (which
    never moves once the incident opened)."""
    return wire.ScheduledVm(vm_uuid=record.vm_uuid, vm_name=record.vm_name, deadline=record.deadline,
                            latest_deadline=record.latest_deadline)


class NoticeSink(Protocol):
    """Where TenantNotifier hands notices: the NoticePublisher, or the OutboxPublisher in front of it."""

    def ensure_tenant_queue(self, tenant: str) -> Future[None]: ...
    def publish(self, tenant: str, host: str, notice: wire.Notice) -> Future[datetime]: ...


class EventIds(Protocol):
    """Each tenant's scheduled event id in the open incident (the IncidentLedger)."""

    def event_for(self, tenant: str) -> str | None: ...


def scheduled_notice(
    *, host: str, tenant: str, event_id: str, incident: Incident, vms: Sequence[ScheduledRecord],
    replies_exchange: str, answers_replies: bool,
) -> wire.EvacuationScheduled:
    """The notice one tenant gets when its VMs on `host` are about to move; sent again after a restart, it is
    the same notice (event id, deadlines). `answers_replies`: the ReplyDesk answers postpone and register
    (postpone not on a failed host)."""
    severity = "maintenance" if incident.planned else str(incident.severity)
    if severity not in ("moderate", "severe", "failed", "maintenance"):
        raise ValueError(f"no evacuation notice for a {severity} incident")
    return wire.EvacuationScheduled(
        event_id=event_id,
        host=host,
        tenant=tenant,
        severity=severity,  # type: ignore[arg-type]  # narrowed by the check above
        reasons=_wire_reasons(incident.reasons),
        vms=tuple(_scheduled_vm(vm) for vm in vms),
        allowed_replies=_allowed_replies(incident.severity, answers_replies),
        reply_exchange=replies_exchange,
        reply_routing_key=reply_routing_key(tenant, host),
    )


def _wire_reasons(reasons: Sequence[Reason]) -> tuple[wire.Reason, ...]:
    return tuple(wire.Reason(source=r.source, sensor=r.sensor, value=r.value, threshold=r.threshold,
                             unit=r.unit, message=r.message) for r in reasons)  # fmt: skip


def _allowed_replies(severity: Severity, answers_replies: bool) -> tuple[ReplyType, ...]:
    if not answers_replies:
        return ("ready",)
    return ("ready", "register") if severity is Severity.FAILED else ("ready", "postpone", "register")


class TenantNotifier:
    """The Notifier as tenant wire notices, handed to a NoticeSink (which does the AMQP): declares each
    tenant's queue before its first notice, and links every later notice to the tenant's scheduled event in
    the open incident (`scheduled_event_id`, from `events`)."""

    def __init__(
        self, *, publisher: NoticeSink, host: str, replies_exchange: str, clock: Callable[[], datetime],
        events: EventIds | None = None, answers_replies: bool = False,
    ) -> None:  # fmt: skip
        self._publisher = publisher
        self._events = events
        self._answers_replies = answers_replies
        self._host = host
        self._replies_exchange = replies_exchange
        self._clock = clock
        self._declared: set[str] = set()

    def _send(self, tenant: str, notice: wire.Notice) -> Future[datetime]:
        # Both jobs run in order on the publisher's one thread, so the queue exists before the publish; the
        # publisher itself declares the known queues again after a reconnect.
        if tenant not in self._declared:
            self._publisher.ensure_tenant_queue(tenant)
            self._declared.add(tenant)
        return self._publisher.publish(tenant, self._host, notice)

    def _event(self, tenant: str) -> str | None:
        return None if self._events is None else self._events.event_for(tenant)

    def evacuation_scheduled(
        self, *, tenant: str, event_id: str, incident: Incident, vms: Sequence[ScheduledRecord]
    ) -> Future[datetime]:
        notice = scheduled_notice(
            host=self._host, tenant=tenant, event_id=event_id, incident=incident, vms=vms,
            replies_exchange=self._replies_exchange, answers_replies=self._answers_replies,
        )  # fmt: skip
        return self._send(tenant, notice)

    def host_at_risk(
        self, *, tenant: str, verdict: HostVerdict, vms: Sequence[tuple[str, str]]
    ) -> Future[datetime]:
        """This host is sick and its policy for the severity is notify: the tenant's VMs here (uuid, name)."""
        if verdict.severity not in (Severity.MODERATE, Severity.SEVERE, Severity.FAILED):
            raise ValueError(f"no host_at_risk notice for a {verdict.severity} host")
        notice = wire.HostAtRisk(
            tenant=tenant, host=self._host, severity=str(verdict.severity),  # type: ignore[arg-type]
            reasons=_wire_reasons(verdict.reasons), at=self._clock(),
            vms=tuple(wire.AtRiskVm(vm_uuid=uuid, vm_name=name) for uuid, name in vms),
        )  # fmt: skip
        return self._send(tenant, notice)

    def evacuation_updated(
        self, *, tenant: str, cause: str, vms: Sequence[ScheduledRecord], hold: str | None = None
    ) -> Future[datetime]:
        notice = wire.EvacuationUpdated(
            tenant=tenant, host=self._host, cause=cause,  # type: ignore[arg-type]  # validated by the model
            hold=hold,  # type: ignore[arg-type]
            vms=tuple(_scheduled_vm(vm) for vm in vms), at=self._clock(),
            scheduled_event_id=self._event(tenant),
        )  # fmt: skip
        return self._send(tenant, notice)

    def evacuation_started(self, *, tenant: str, vm_uuid: str, vm_name: str) -> Future[datetime]:
        notice = wire.EvacuationStarted(
            tenant=tenant, host=self._host, vm_uuid=vm_uuid, vm_name=vm_name, at=self._clock(),
            scheduled_event_id=self._event(tenant),
        )  # fmt: skip
        return self._send(tenant, notice)

    def vm_evacuated(
        self, *, tenant: str, vm_uuid: str, vm_name: str, to_host: str, downtime_seconds: float | None = None,
        bytes_moved: int | None = None,
    ) -> Future[datetime]:
        notice = wire.VmEvacuated(
            tenant=tenant, vm_uuid=vm_uuid, vm_name=vm_name, host=self._host, from_host=self._host,
            to_host=to_host, at=self._clock(), scheduled_event_id=self._event(tenant),
            downtime_seconds=downtime_seconds, bytes_moved=bytes_moved,
        )  # fmt: skip
        return self._send(tenant, notice)

    def evacuation_completed(
        self, *, tenant: str, moved: Sequence[str], failed: Sequence[str] = ()
    ) -> Future[datetime]:
        notice = wire.EvacuationCompleted(
            tenant=tenant, host=self._host, moved_vm_uuids=tuple(moved), failed_vm_uuids=tuple(failed),
            at=self._clock(), scheduled_event_id=self._event(tenant),
        )  # fmt: skip
        return self._send(tenant, notice)

    def evacuation_cancelled(self, *, tenant: str, vm_uuids: Sequence[str], reason: str) -> Future[datetime]:
        notice = wire.EvacuationCancelled(
            tenant=tenant, host=self._host, vm_uuids=tuple(vm_uuids), reason=reason, at=self._clock(),
            scheduled_event_id=self._event(tenant),
        )  # fmt: skip
        return self._send(tenant, notice)

    def evacuation_failed(self, *, tenant: str, vm_uuid: str, vm_name: str, reason: str) -> Future[datetime]:
        notice = wire.EvacuationFailed(
            tenant=tenant, host=self._host, vm_uuid=vm_uuid, vm_name=vm_name, reason=reason, at=self._clock(),
            scheduled_event_id=self._event(tenant),
        )  # fmt: skip
        return self._send(tenant, notice)

    def reply_rejected(
        self,
        *,
        tenant: str,
        code: WireRejectCode,
        reason: str,
        in_reply_to: str | None = None,
        vm_uuid: str | None = None,
    ) -> Future[datetime]:
        notice = wire.ReplyRejected(
            tenant=tenant, host=self._host, code=code, reason=reason[:4096] or code,
            in_reply_to=None if in_reply_to is None else in_reply_to[:255], vm_uuid=vm_uuid, at=self._clock(),
        )  # fmt: skip
        return self._send(tenant, notice)
