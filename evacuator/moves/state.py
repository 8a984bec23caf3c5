"""The move state machine, pure: states, allowed transitions, migrator steps to states, resume decisions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from evacuator.errors import JournalError
from evacuator.hypervisor.model import VmInfo, is_active
from evacuator.migrate.steps import MoveStep


class MoveState(StrEnum):
    """Where one VM's move stands; the last three are its endings besides `done`."""

    PLANNED = "planned"
    NOTIFIED = "notified"
    WAITING = "waiting"
    QUIESCING = "quiescing"
    COPYING = "copying"
    DEFINING = "defining"
    STARTING = "starting"
    VERIFYING = "verifying"
    CLEANING = "cleaning"
    DONE = "done"
    ROLLING_BACK = "rolling_back"
    RESTORED_ON_SOURCE = "restored_on_source"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Phase(StrEnum):
    """Journaled before a step (`started`) and after it (`finished`, `failed`); `due`: its timer fired;
    `precopying`: still in its window, with its destination chosen, claimed and journaled, and its disks
    being pre-copied there (moves/window_copies.py)."""

    ENTERED = "entered"
    PRECOPYING = "precopying"
    DUE = "due"
    STARTED = "started"
    FINISHED = "finished"
    FAILED = "failed"


S = MoveState
TERMINAL = frozenset({S.DONE, S.RESTORED_ON_SOURCE, S.FAILED, S.CANCELLED})
PENDING = frozenset({S.PLANNED, S.NOTIFIED, S.WAITING})
# Cancelling is allowed only while the VM still runs untouched on its source (issue #5: before quiescing).
CANCELLABLE = PENDING

_STEPS = (S.QUIESCING, S.COPYING, S.DEFINING, S.STARTING, S.VERIFYING, S.CLEANING)
_ALLOWED: dict[MoveState, frozenset[MoveState]] = {
    # A live move starts by copying: the guest keeps running until libvirt switches it over.
    S.PLANNED: frozenset({S.NOTIFIED, S.WAITING, S.QUIESCING, S.COPYING, S.CANCELLED, S.ROLLING_BACK,
                          S.FAILED}),
    S.NOTIFIED: frozenset({S.WAITING, S.QUIESCING, S.COPYING, S.CANCELLED, S.ROLLING_BACK, S.FAILED}),
    S.WAITING: frozenset({S.QUIESCING, S.COPYING, S.CANCELLED, S.ROLLING_BACK, S.FAILED}),
    S.ROLLING_BACK: frozenset({S.RESTORED_ON_SOURCE, S.FAILED, S.WAITING}),
    # A finished move may be planned again only as a new move (a later incident).
    **{end: frozenset({S.PLANNED}) for end in TERMINAL},
}
for _index, _state in enumerate(_STEPS):
    # A retried step re-enters itself; a step whose reality shows the next one done already skips ahead.
    _ALLOWED[_state] = frozenset({*_STEPS[_index:], S.DONE, S.ROLLING_BACK, S.FAILED})

STEP_STATE: dict[MoveStep, MoveState] = {
    MoveStep.QUIESCE: S.QUIESCING,
    MoveStep.COPY_DISKS: S.COPYING,
    # A copy is not done until its content is verified.
    MoveStep.VERIFY_DISKS: S.COPYING,
    MoveStep.DEFINE: S.DEFINING,
    MoveStep.START: S.STARTING,
    MoveStep.VERIFY: S.VERIFYING,
    MoveStep.CLEAN_UP: S.CLEANING,
}


def allowed(old: MoveState, new: MoveState) -> bool:
    return old == new or new in _ALLOWED[old]


def check_transition(vm_uuid: str, old: MoveState, new: MoveState) -> None:
    if not allowed(old, new):
        raise JournalError(f"VM {vm_uuid}: illegal move transition {old} -> {new}")


@dataclass(frozen=True, slots=True, kw_only=True)
class MoveRecord:
    """One VM's move as the journal holds it. `start_on_destination` is the run state before quiescing."""

    vm_uuid: str
    vm_name: str
    tenant: str | None
    source: str
    destination: str | None
    state: MoveState
    phase: Phase
    step: str | None
    start_on_destination: bool | None
    may_restart_on_source: bool
    deadline: datetime | None
    attempt: int
    error: str | None
    updated_at: datetime
    # From the VM's facts: a group moves all or nothing and starts in boot order; priority orders the queue.
    group: str | None = None
    boot_order: int = 0
    priority: int = 0
    # A move back (return_to_service.move_back): the one host it may go to, the one the VM was evacuated
    # from; if that host will not take it, the VM stays where it runs.
    return_to: str | None = None


class ResumeAction(StrEnum):
    NOTHING = "nothing"
    WAIT_FOR_TIMER = "wait_for_timer"
    MOVE = "move"
    ROLL_BACK = "roll_back"


def resume_action(record: MoveRecord, *, timer_pending: bool) -> ResumeAction:
    """What start-up does with a journaled move: a pending move whose timer is gone was due (its timer fired,
    or the process died between the timer firing and the move starting), so it moves now."""
    if record.state in TERMINAL:
        return ResumeAction.NOTHING
    if record.state is S.ROLLING_BACK:
        return ResumeAction.ROLL_BACK
    if record.state in PENDING and timer_pending and record.phase is not Phase.DUE:
        return ResumeAction.WAIT_FOR_TIMER
    return ResumeAction.MOVE


def invariant_violations(vm_uuid: str, source: VmInfo | None, destination: VmInfo | None) -> tuple[str, ...]:
    """What is wrong with the VM's whereabouts, read from both hosts at a step boundary."""
    problems = []
    if source is None and destination is None:
        problems.append(f"VM {vm_uuid} is defined nowhere")
    if is_active(source) and is_active(destination):
        problems.append(f"VM {vm_uuid} runs on both hosts")
    return tuple(problems)


def boot_ordered(records: Sequence[MoveRecord]) -> list[MoveRecord]:
    """A consistency group's records in the order its VMs start on the destination."""
    return sorted(records, key=lambda r: (r.boot_order, r.vm_name, r.vm_uuid))
