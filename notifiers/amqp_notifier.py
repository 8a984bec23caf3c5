"""AmqpNotifier: the service's Notifier seam, turning plans and move outcomes into wire notices to publish."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import Protocol

from evacuator.planner import PlannedMove
from monitors.verdicts import HostVerdict, Severity
from notifiers.messages import (
    EvacuationFailed,
    EvacuationScheduled,
    Notice,
    Reason,
    ScheduledVm,
    VmEvacuated,
    WireSeverity,
)
from notifiers.topology import check_word, reply_routing_key

_WIRE_SEVERITIES: dict[Severity, WireSeverity] = {
    Severity.MODERATE: "moderate",
    Severity.SEVERE: "severe",
    Severity.FAILED: "failed",
}


class NoticeSink(Protocol):
    """What AmqpNotifier needs from NoticePublisher (and what a test fake provides)."""

    def ensure_tenant_queue(self, tenant: str) -> Future[None]: ...
    def publish(self, tenant: str, host: str, notice: Notice) -> Future[datetime]: ...


def _utc_now() -> datetime:
    return datetime.now(UTC)


class AmqpNotifier:
    """Builds notices about this host's VMs; thread-safe. Outcomes name the scheduled notice's event_id."""

    def __init__(
        self,
        sink: NoticeSink,
        *,
        host: str,
        replies_exchange: str,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._sink = sink
        self._host = check_word("host", host)
        self._replies_exchange = replies_exchange
        self._clock = clock
        self._lock = threading.Lock()
        self._tenants_with_queue: set[str] = set()
        self._scheduled_event_ids: dict[str, str] = {}

    def evacuation_scheduled(
        self, *, tenant: str, verdict: HostVerdict, moves: Sequence[PlannedMove]
    ) -> Future[datetime]:
        notice = EvacuationScheduled(
            host=self._host,
            tenant=tenant,
            severity=_WIRE_SEVERITIES.get(verdict.severity, "severe"),
            reasons=tuple(
                Reason(
                    source=r.source,
                    sensor=r.sensor,
                    value=r.value,
                    threshold=r.threshold,
                    unit=r.unit,
                    message=r.message,
                )
                for r in verdict.reasons
            ),
            vms=tuple(ScheduledVm(vm_uuid=m.vm_uuid, vm_name=m.vm_name, deadline=m.deadline) for m in moves),
            reply_exchange=self._replies_exchange,
            reply_routing_key=reply_routing_key(tenant, self._host),
        )
        with self._lock:
            for move in moves:
                self._scheduled_event_ids[move.vm_uuid] = notice.event_id
        return self._publish(tenant, notice)

    def vm_evacuated(self, *, tenant: str, vm_uuid: str, vm_name: str, to_host: str) -> Future[datetime]:
        notice = VmEvacuated(
            tenant=tenant,
            vm_uuid=vm_uuid,
            vm_name=vm_name,
            from_host=self._host,
            to_host=to_host,
            at=self._clock(),
            scheduled_event_id=self._take_scheduled(vm_uuid),
        )
        return self._publish(tenant, notice)

    def evacuation_failed(self, *, tenant: str, vm_uuid: str, vm_name: str, reason: str) -> Future[datetime]:
        notice = EvacuationFailed(
            tenant=tenant,
            host=self._host,
            vm_uuid=vm_uuid,
            vm_name=vm_name,
            reason=reason[:4096] or "unknown",
            at=self._clock(),
            scheduled_event_id=self._take_scheduled(vm_uuid),
        )
        return self._publish(tenant, notice)

    def _take_scheduled(self, vm_uuid: str) -> str | None:
        with self._lock:
            return self._scheduled_event_ids.pop(vm_uuid, None)

    def _publish(self, tenant: str, notice: Notice) -> Future[datetime]:
        """Declare the tenant's queue before its first notice: tenants are named only in VM metadata.

        Both go through the publisher's single thread in order, so the queue exists when the notice is routed.
        """
        with self._lock:
            first = tenant not in self._tenants_with_queue
            self._tenants_with_queue.add(tenant)
        if first:
            self._sink.ensure_tenant_queue(tenant).add_done_callback(
                lambda declared: self._forget_queue(tenant) if declared.exception() else None
            )
        return self._sink.publish(tenant, self._host, notice)

    def _forget_queue(self, tenant: str) -> None:
        with self._lock:
            self._tenants_with_queue.discard(tenant)
