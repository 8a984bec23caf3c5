"""Runs a migrator's steps in order: finds the VM, reports each step's start and end, holds transfer slots."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

import structlog

from evacuator.errors import EvacuatorError, MigrationError
from evacuator.hypervisor.model import Hypervisor, is_active
from evacuator.migrate.steps import (
    EVENT_NAMES,
    TRANSFER_STEPS,
    Action,
    MoveAttempt,
    MoveReport,
    MoveStep,
    StepEvent,
    StepPhase,
    StepRefused,
    StepTiming,
    TransferSlot,
)

log = structlog.get_logger(__name__)


class Stepper:
    """What every migrator does around its steps: one Stepper per move attempt's pair of hosts."""

    def __init__(
        self, *, source: Hypervisor, destination: Hypervisor, clock: Callable[[], datetime],
        on_step: Callable[[StepEvent], None],
    ) -> None:
        self.source = source
        self.destination = destination
        self.clock = clock
        self._on_step = on_step

    def begin(self, vm_uuid: str, start_on_destination: bool | None) -> MoveAttempt:
        """Finds where the VM is; refuses (MigrationError, step "locate") when it is nowhere or may run twice.
        `start_on_destination` None means "if it runs now"."""
        uuid = vm_uuid.lower()

        def refuse(message: str) -> MigrationError:
            return MigrationError(f"VM {uuid} {message}", vm_uuid=uuid, step="locate")

        src_name, dst_name = self.source.name, self.destination.name
        try:
            src, dst = self.source.find_vm(uuid), self.destination.find_vm(uuid)
        except EvacuatorError as exc:
            raise refuse(f"cannot be located: {exc}") from exc
        if src is None and dst is None:
            raise refuse(f"is defined on neither {src_name} nor {dst_name}")
        if dst is not None and is_active(src):
            raise refuse(f"runs on {src_name} while also defined on {dst_name} (running there "
                         "too, or a copy that may be stale): refusing to touch either, resolve by hand")
        known = src if src is not None else dst
        assert known is not None
        run_after = start_on_destination
        if run_after is None:
            run_after = is_active(src) or is_active(dst)
        return MoveAttempt(uuid=uuid, name=known.name, run_after=run_after)

    def run(
        self, move: MoveAttempt, plan: Sequence[tuple[MoveStep, Action]], *, transfer_slot: TransferSlot,
        began: datetime,
    ) -> MoveReport:
        """Runs the steps of `plan` in order; the disks' steps hold `transfer_slot`, the others do not."""
        log.info("move_started", vm_uuid=move.uuid, vm_name=move.name, source=self.source.name,
                 destination=self.destination.name, start_on_destination=move.run_after)
        timings = []
        with move.slot:
            for step, action in plan:
                # The disks travel under a transfer slot (the engine's caps); shutdown and start do not.
                if (step in TRANSFER_STEPS) != move.holding:
                    if move.holding:
                        move.slot.close()
                    else:
                        move.slot.enter_context(transfer_slot(move.uuid))
                    move.holding = not move.holding
                timings.append(self.step(move, step, action))
        report = MoveReport(
            vm_uuid=move.uuid, vm_name=move.name, source=self.source.name, destination=self.destination.name,
            steps=tuple(timings), bytes_copied=move.bytes_copied, forced_off=move.forced_off,
            running_on_destination=move.run_after, seconds=(self.clock() - began).total_seconds(),
        )
        log.info("move_finished", vm_uuid=move.uuid, seconds=report.seconds, bytes_copied=report.bytes_copied)
        return report

    def step(self, move: MoveAttempt, step: MoveStep, action: Action) -> StepTiming:
        """Runs one step between its started and finished (or skipped, or failed) events."""
        started_at = self.clock()
        self.emit(move, step, StepPhase.STARTED, started_at, None)
        try:
            did_work = action(move)
        except (EvacuatorError, StepRefused) as exc:
            failed_at = self.clock()
            seconds = (failed_at - started_at).total_seconds()
            self.emit(move, step, StepPhase.FAILED, failed_at, seconds, error=str(exc))
            raise MigrationError(f"VM {move.uuid}: step {step} failed: {exc}",
                                 vm_uuid=move.uuid, step=step) from exc
        ended_at = self.clock()
        seconds = (ended_at - started_at).total_seconds()
        self.emit(move, step, StepPhase.FINISHED if did_work else StepPhase.SKIPPED, ended_at, seconds)
        return StepTiming(step=step, skipped=not did_work, seconds=seconds)

    def emit(self, move: MoveAttempt, step: MoveStep, phase: StepPhase, at: datetime, seconds: float | None,
             error: str | None = None) -> None:
        """Logs the step's event and hands it to the listener (the engine journals it)."""
        emit = log.warning if phase is StepPhase.FAILED else log.info
        emit(EVENT_NAMES[phase], vm_uuid=move.uuid, step=str(step), seconds=seconds, error=error)
        self._on_step(StepEvent(vm_uuid=move.uuid, step=step, phase=phase, at=at, seconds=seconds,
                                error=error))
