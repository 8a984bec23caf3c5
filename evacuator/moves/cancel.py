"""Cancelling pending moves in the journal: a VM's, or its whole consistency group's, before it quiesces."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from evacuator.moves.journal import Journal
from evacuator.moves.state import CANCELLABLE, MoveRecord, MoveState, Phase


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
