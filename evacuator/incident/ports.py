"""What the incident service drives: the tenant notifier and the move engine, as Protocols."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from datetime import datetime
from typing import Protocol

from evacuator.incident.ledger import Incident, ScheduledRecord
from evacuator.moves.engine import Planned
from evacuator.moves.state import MoveRecord, MoveState


class Notifier(Protocol):
    """Tells tenants what happens to their VMs; each call returns once the notice is stored (the outbox) and
    resolves when the broker confirmed it."""

    def evacuation_scheduled(
        self, *, tenant: str, event_id: str, incident: Incident, vms: Sequence[ScheduledRecord]
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
    def record(self, vm_uuid: str) -> MoveRecord | None: ...
    def plan(self, moves: Iterable[Planned], *, may_restart_on_source: bool) -> None: ...
    def mark(self, vm_uuid: str, state: MoveState) -> None: ...
    def submit(self, vm_uuid: str) -> bool: ...
