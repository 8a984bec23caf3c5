"""The ScheduledLedger: per VM, what its tenant was last told (event, deadline), for judging its replies."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from evacuator.incident.planner import PlannedMove
from monitors.verdicts import Severity


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
