"""RecordingNotifier: the Notifier fake, recording every notice and confirming it at once (or failing)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime

from evacuator.incident.ledger import Incident, ScheduledRecord
from monitors.verdicts import HostVerdict
from notifiers.wire import WireRejectCode


@dataclass(slots=True)
class RecordingNotifier:
    """The fake: records every call and confirms at once (or fails, after inject_error)."""

    clock: Callable[[], datetime]
    sent: list[tuple[str, str, dict[str, object]]] = field(default_factory=list)
    error: Exception | None = None
    refusing: dict[str, Exception] = field(default_factory=dict)

    def inject_error(self, exc: Exception) -> None:
        """Every later notice is taken, and its confirm fails with `exc` (the broker refused it)."""
        self.error = exc

    def refuse(self, kind: str, exc: Exception) -> None:
        """Every later call for a notice of `kind` raises `exc`: nothing is taken (the outbox is closed)."""
        self.refusing[kind] = exc

    def _done(self, kind: str, tenant: str, **details: object) -> Future[datetime]:
        if kind in self.refusing:
            raise self.refusing[kind]
        self.sent.append((kind, tenant, details))
        future: Future[datetime] = Future()
        if self.error is not None:
            future.set_exception(self.error)
        else:
            future.set_result(self.clock())
        return future

    def evacuation_scheduled(
        self, *, tenant: str, event_id: str, incident: Incident, vms: Sequence[ScheduledRecord]
    ) -> Future[datetime]:
        return self._done("evacuation_scheduled", tenant, event_id=event_id, incident=incident,
                          vms=tuple(vms))

    def vm_evacuated(
        self, *, tenant: str, vm_uuid: str, vm_name: str, to_host: str, downtime_seconds: float | None = None,
        bytes_moved: int | None = None,
    ) -> Future[datetime]:
        if downtime_seconds is None and bytes_moved is None:  # what the tests written before the cost expect
            return self._done("vm_evacuated", tenant, vm_uuid=vm_uuid, vm_name=vm_name, to_host=to_host)
        return self._done("vm_evacuated", tenant, vm_uuid=vm_uuid, vm_name=vm_name, to_host=to_host,
                          downtime_seconds=downtime_seconds, bytes_moved=bytes_moved)  # fmt: skip

    def host_at_risk(
        self, *, tenant: str, verdict: HostVerdict, vms: Sequence[tuple[str, str]]
    ) -> Future[datetime]:
        return self._done("host_at_risk", tenant, severity=str(verdict.severity), vms=tuple(vms))

    def evacuation_failed(self, *, tenant: str, vm_uuid: str, vm_name: str, reason: str) -> Future[datetime]:
        return self._done("evacuation_failed", tenant, vm_uuid=vm_uuid, vm_name=vm_name, reason=reason)

    def evacuation_updated(
        self, *, tenant: str, cause: str, vms: Sequence[ScheduledRecord], hold: str | None = None
    ) -> Future[datetime]:
        if hold is None:
            return self._done("evacuation_updated", tenant, cause=cause, vms=tuple(vms))
        return self._done("evacuation_updated", tenant, cause=cause, vms=tuple(vms), hold=hold)

    def evacuation_started(self, *, tenant: str, vm_uuid: str, vm_name: str) -> Future[datetime]:
        return self._done("evacuation_started", tenant, vm_uuid=vm_uuid, vm_name=vm_name)

    def evacuation_completed(
        self, *, tenant: str, moved: Sequence[str], failed: Sequence[str] = ()
    ) -> Future[datetime]:
        return self._done("evacuation_completed", tenant, moved=tuple(moved), failed=tuple(failed))

    def evacuation_cancelled(self, *, tenant: str, vm_uuids: Sequence[str], reason: str) -> Future[datetime]:
        return self._done("evacuation_cancelled", tenant, vm_uuids=tuple(vm_uuids), reason=reason)

    def reply_rejected(
        self,
        *,
        tenant: str,
        code: WireRejectCode,
        reason: str,
        in_reply_to: str | None = None,
        vm_uuid: str | None = None,
    ) -> Future[datetime]:
        return self._done(
            "reply_rejected", tenant, code=code, reason=reason, in_reply_to=in_reply_to, vm_uuid=vm_uuid
        )
