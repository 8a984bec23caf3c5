"""Translates the service's plan and results into tenant wire notices; the AMQP Notifier and its fake."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime

from evacuator.planner import PlannedMove
from monitors.verdicts import HostVerdict
from notifiers import messages as wire
from notifiers.publisher import NoticePublisher
from notifiers.topology import reply_routing_key


def scheduled_notice(
    *, host: str, tenant: str, verdict: HostVerdict, moves: Sequence[PlannedMove], replies_exchange: str
) -> wire.EvacuationScheduled:
    """The notice one tenant gets when its VMs on `host` are about to move."""
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
        vms=tuple(wire.ScheduledVm(vm_uuid=m.vm_uuid, vm_name=m.vm_name, deadline=m.deadline) for m in moves),
        reply_exchange=replies_exchange,
        reply_routing_key=reply_routing_key(tenant, host),
    )


class AmqpNotifier:
    """The Notifier over a NoticePublisher: declares each tenant's queue before its first notice."""

    def __init__(
        self, *, publisher: NoticePublisher, host: str, replies_exchange: str, clock: Callable[[], datetime]
    ) -> None:
        self._publisher = publisher
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

    def evacuation_scheduled(
        self, *, tenant: str, verdict: HostVerdict, moves: Sequence[PlannedMove]
    ) -> Future[datetime]:
        notice = scheduled_notice(
            host=self._host,
            tenant=tenant,
            verdict=verdict,
            moves=moves,
            replies_exchange=self._replies_exchange,
        )
        return self._send(tenant, notice)

    def vm_evacuated(self, *, tenant: str, vm_uuid: str, vm_name: str, to_host: str) -> Future[datetime]:
        notice = wire.VmEvacuated(
            tenant=tenant, vm_uuid=vm_uuid, vm_name=vm_name, from_host=self._host, to_host=to_host,
            at=self._clock(),
        )  # fmt: skip
        return self._send(tenant, notice)

    def evacuation_failed(self, *, tenant: str, vm_uuid: str, vm_name: str, reason: str) -> Future[datetime]:
        notice = wire.EvacuationFailed(
            tenant=tenant, host=self._host, vm_uuid=vm_uuid, vm_name=vm_name, reason=reason, at=self._clock()
        )
        return self._send(tenant, notice)


@dataclass(slots=True)
class RecordingNotifier:
    """The fake: records every call and confirms at once (or fails, after inject_error)."""

    clock: Callable[[], datetime]
    sent: list[tuple[str, str, dict[str, object]]] = field(default_factory=list)
    error: Exception | None = None

    def inject_error(self, exc: Exception) -> None:
        self.error = exc

    def _done(self, kind: str, tenant: str, **details: object) -> Future[datetime]:
        self.sent.append((kind, tenant, details))
        future: Future[datetime] = Future()
        if self.error is not None:
            future.set_exception(self.error)
        else:
            future.set_result(self.clock())
        return future

    def evacuation_scheduled(
        self, *, tenant: str, verdict: HostVerdict, moves: Sequence[PlannedMove]
    ) -> Future[datetime]:
        return self._done("evacuation_scheduled", tenant, verdict=verdict, moves=tuple(moves))

    def vm_evacuated(self, *, tenant: str, vm_uuid: str, vm_name: str, to_host: str) -> Future[datetime]:
        return self._done("vm_evacuated", tenant, vm_uuid=vm_uuid, vm_name=vm_name, to_host=to_host)

    def evacuation_failed(self, *, tenant: str, vm_uuid: str, vm_name: str, reason: str) -> Future[datetime]:
        return self._done("evacuation_failed", tenant, vm_uuid=vm_uuid, vm_name=vm_name, reason=reason)
