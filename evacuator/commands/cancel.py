"""`evacuator cancel`: stops a pending move (before quiescing) in the journal and tells the tenant."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import Protocol

import structlog

from evacuator.moves.journal import Journal
from evacuator.moves.state import CANCELLABLE, MoveRecord, MoveState, Phase
from evacuator.settings import Settings

log = structlog.get_logger(__name__)


class CancelNotifier(Protocol):
    """The one call `cancel` needs (AmqpNotifier has it; notifiers/messages.py: EvacuationCancelled)."""

    def evacuation_cancelled(
        self, *, tenant: str, vm_uuids: Sequence[str], reason: str
    ) -> Future[datetime]: ...


def cancel_moves(
    journal: Journal, vm_uuid: str, reason: str, clock: Callable[[], datetime]
) -> tuple[MoveRecord, ...]:
    """Cancels the VM's pending move, and its whole consistency group's (a group moves all or nothing).

    Returns the cancelled records; none when the move is unknown or already past waiting. A daemon whose
    timer fires later finds the record cancelled and moves nothing."""
    record = journal.get(vm_uuid.lower())
    if record is None or record.state not in CANCELLABLE:
        return ()
    members = [record] if record.group is None else [
        r for r in journal.unfinished() if r.group == record.group]
    if any(member.state not in CANCELLABLE for member in members):
        return ()
    return tuple(journal.advance(member, MoveState.CANCELLED, Phase.ENTERED, clock(), error=reason)
                 for member in members)


def tell_tenants(notifier: CancelNotifier, cancelled: Sequence[MoveRecord], reason: str,
                 timeout_seconds: float) -> None:
    for tenant in sorted({r.tenant for r in cancelled if r.tenant is not None}):
        uuids = [r.vm_uuid for r in cancelled if r.tenant == tenant]
        notifier.evacuation_cancelled(tenant=tenant, vm_uuids=uuids, reason=reason).result(timeout_seconds)
        log.info("tenant_told_cancelled", tenant=tenant, vm_uuids=uuids)


def run_cancel(settings: Settings, vm_uuid: str, reason: str) -> int:
    from evacuator.incident.notices import AmqpNotifier
    from notifiers.publisher import NoticePublisher

    with Journal(settings.state_dir / "journal.sqlite") as journal:
        cancelled = cancel_moves(journal, vm_uuid, reason, lambda: datetime.now(UTC))
        current = journal.get(vm_uuid.lower())
    if not cancelled:
        state = "no move" if current is None else f"its move is {current.state}"
        print(f"evacuator: cannot cancel VM {vm_uuid}: {state} (only planned, notified or waiting moves "
              "can be cancelled)", file=sys.stderr)
        return 1
    print(f"cancelled: {', '.join(r.vm_uuid for r in cancelled)}")
    # Published directly, not through the daemon's outbox: this process ends in a moment.
    publisher = NoticePublisher(settings.broker, clock=lambda: datetime.now(UTC))
    publisher.start()
    try:
        notifier = AmqpNotifier(publisher=publisher, host=settings.host.name,
                                replies_exchange=settings.broker.replies_exchange,
                                clock=lambda: datetime.now(UTC))
        tell_tenants(notifier, cancelled, reason, settings.broker.confirm_timeout_seconds)
    finally:
        publisher.close()
    return 0
