"""What the incident service drives: the tenant notifier and the move engine, as Protocols."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from datetime import datetime
from typing import Protocol

from evacuator.incident.ledger import Incident, ScheduledRecord
from evacuator.moves.engine import Planned
from evacuator.moves.journal import MoveCost
from evacuator.moves.state import MoveRecord, MoveState
from evacuator.placement.guards import Hold
from monitors.verdicts import HostVerdict


class Notifier(Protocol):
    """Tells tenants what happens to their VMs; each call returns once the notice is stored (the outbox) and
    resolves when the broker confirmed it."""

    def evacuation_scheduled(
        self, *, tenant: str, event_id: str, incident: Incident, vms: Sequence[ScheduledRecord]
    ) -> Future[datetime]: ...
    def vm_evacuated(
        self, *, tenant: str, vm_uuid: str, vm_name: str, to_host: str, downtime_seconds: float | None = None,
        bytes_moved: int | None = None,
    ) -> Future[datetime]: ...
    def evacuation_failed(
        self, *, tenant: str, vm_uuid: str, vm_name: str, reason: str
    ) -> Future[datetime]: ...
    def evacuation_started(self, *, tenant: str, vm_uuid: str, vm_name: str) -> Future[datetime]: ...
    def evacuation_completed(
        self, *, tenant: str, moved: Sequence[str], failed: Sequence[str] = ()
    ) -> Future[datetime]: ...
    def evacuation_updated(
        self, *, tenant: str, cause: str, vms: Sequence[ScheduledRecord], hold: str | None = None
    ) -> Future[datetime]: ...
    def host_at_risk(
        self, *, tenant: str, verdict: HostVerdict, vms: Sequence[tuple[str, str]]
    ) -> Future[datetime]: ...


class MoveCosts(Protocol):
    """What each finished move cost its VM, as the move journal recorded it (moves/journal.py Journal)."""

    def cost(self, vm_uuid: str) -> MoveCost: ...


class Guard(Protocol):
    """The blast-radius guards as the service brackets an incident with them (moves/guard.py CloudGuard):
    `on_hold` hears each new reason the moves are held back."""

    def begin(self, *, failed: bool, on_hold: Callable[[Hold], None]) -> None: ...
    def end(self) -> None: ...


class NoGuard:
    """No blast-radius guards (no host view)."""

    def begin(self, *, failed: bool, on_hold: Callable[[Hold], None]) -> None:
        """Nothing to bracket."""

    def end(self) -> None:
        """Nothing to give back."""


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
