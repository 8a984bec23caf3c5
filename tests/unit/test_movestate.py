"""The move state machine as tables: transitions, resume decisions, invariants."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from evacuator.errors import JournalError
from evacuator.hypervisor.facts import VmFacts
from evacuator.hypervisor.model import VmInfo, VmState
from evacuator.migrate.steps import MoveStep
from evacuator.moves.state import (
    STEP_STATE,
    MoveRecord,
    MoveState,
    Phase,
    ResumeAction,
    allowed,
    check_transition,
    invariant_violations,
    resume_action,
)

S = MoveState
T0 = datetime(2026, 11, 25, 4, 0, tzinfo=UTC)
UUID = "0b5e1f0a-5c1e-4d2a-9a51-3f7f4c2d9e01"


@pytest.mark.parametrize(("old", "new"), [
    (S.PLANNED, S.NOTIFIED), (S.NOTIFIED, S.WAITING), (S.WAITING, S.QUIESCING), (S.QUIESCING, S.COPYING),
    (S.COPYING, S.DEFINING), (S.DEFINING, S.STARTING), (S.STARTING, S.VERIFYING), (S.VERIFYING, S.CLEANING),
    (S.CLEANING, S.DONE), (S.COPYING, S.COPYING), (S.QUIESCING, S.CLEANING), (S.COPYING, S.ROLLING_BACK),
    (S.ROLLING_BACK, S.RESTORED_ON_SOURCE), (S.ROLLING_BACK, S.FAILED), (S.WAITING, S.CANCELLED),
    (S.DONE, S.PLANNED), (S.FAILED, S.PLANNED),
])  # fmt: skip
def test_allowed_transitions(old: MoveState, new: MoveState) -> None:
    assert allowed(old, new)
    check_transition(UUID, old, new)


@pytest.mark.parametrize(("old", "new"), [
    (S.COPYING, S.QUIESCING), (S.CLEANING, S.COPYING), (S.DONE, S.QUIESCING), (S.PLANNED, S.DONE),
    (S.QUIESCING, S.CANCELLED), (S.COPYING, S.CANCELLED), (S.RESTORED_ON_SOURCE, S.DONE),
    (S.WAITING, S.DEFINING), (S.CANCELLED, S.QUIESCING),
])  # fmt: skip
def test_forbidden_transitions(old: MoveState, new: MoveState) -> None:
    assert not allowed(old, new)
    with pytest.raises(JournalError, match="illegal move transition"):
        check_transition(UUID, old, new)


def test_every_migrator_step_has_a_state() -> None:
    assert set(STEP_STATE) == set(MoveStep)


def record(state: MoveState, phase: Phase = Phase.ENTERED) -> MoveRecord:
    return MoveRecord(
        vm_uuid=UUID, vm_name="web", tenant="acme", source="host-a", destination="host-b", state=state,
        phase=phase, step=None, start_on_destination=True, may_restart_on_source=True, deadline=T0, attempt=0,
        error=None, updated_at=T0,
    )  # fmt: skip


@pytest.mark.parametrize(("state", "phase", "timer_pending", "action"), [
    (S.PLANNED, Phase.ENTERED, True, ResumeAction.WAIT_FOR_TIMER),
    (S.WAITING, Phase.ENTERED, True, ResumeAction.WAIT_FOR_TIMER),
    # The timer fired (and left the store) but the move never started: it is due now.
    (S.WAITING, Phase.ENTERED, False, ResumeAction.MOVE),
    (S.NOTIFIED, Phase.ENTERED, False, ResumeAction.MOVE),
    (S.WAITING, Phase.DUE, True, ResumeAction.MOVE),
    (S.QUIESCING, Phase.STARTED, False, ResumeAction.MOVE),
    (S.COPYING, Phase.FINISHED, True, ResumeAction.MOVE),
    (S.CLEANING, Phase.STARTED, False, ResumeAction.MOVE),
    (S.ROLLING_BACK, Phase.STARTED, False, ResumeAction.ROLL_BACK),
    (S.DONE, Phase.FINISHED, False, ResumeAction.NOTHING),
    (S.FAILED, Phase.FAILED, False, ResumeAction.NOTHING),
    (S.CANCELLED, Phase.ENTERED, True, ResumeAction.NOTHING),
])  # fmt: skip
def test_resume_decision(state: MoveState, phase: Phase, timer_pending: bool, action: ResumeAction) -> None:
    assert resume_action(record(state, phase), timer_pending=timer_pending) is action


def vm(state: VmState) -> VmInfo:
    return VmInfo(uuid=UUID, name="web", state=state, macs=(), volumes=(), facts=VmFacts())


@pytest.mark.parametrize(("source", "destination", "problems"), [
    (vm(VmState.RUNNING), None, 0),
    (vm(VmState.SHUT_OFF), vm(VmState.SHUT_OFF), 0),
    (None, vm(VmState.RUNNING), 0),
    (None, None, 1),
    (vm(VmState.RUNNING), vm(VmState.RUNNING), 1),
    (vm(VmState.PAUSED), vm(VmState.RUNNING), 1),
])  # fmt: skip
def test_invariants(source: VmInfo | None, destination: VmInfo | None, problems: int) -> None:
    assert len(invariant_violations(UUID, source, destination)) == problems
