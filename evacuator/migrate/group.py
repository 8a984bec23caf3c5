"""A consistency group's joint shutdown: its VMs are asked to shut down at once, not one by one."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from evacuator.errors import EvacuatorError, MigrationError
from evacuator.hypervisor.model import Hypervisor, is_active
from evacuator.migrate.shutdown_watch import ShutdownWatch
from evacuator.migrate.stepper import Stepper
from evacuator.migrate.steps import MoveStep, StepEvent, StepPhase, StepRefused


class GroupQuiesce:
    """The quiesce step for a whole group, reported per VM as the cold migrator reports it; the group's
    other steps are the cold migrator's, run for each VM in turn (the caller orders them)."""

    def __init__(
        self, *, source: Hypervisor, destination: Hypervisor, clock: Callable[[], datetime],
        sleep: Callable[[float], None], on_step: Callable[[StepEvent], None], shutdown_timeout_seconds: float,
        poll_interval_seconds: float = 0.5,
    ) -> None:
        self._stepper = Stepper(source=source, destination=destination, clock=clock, on_step=on_step)
        self._src = source
        self._dst = destination
        self._clock = clock
        self._sleep = sleep
        self._shutdown_timeout_seconds = shutdown_timeout_seconds
        self._poll_interval_seconds = poll_interval_seconds

    def quiesce_together(self, vm_uuids: Sequence[str]) -> None:
        """Asks every VM of a group to shut down at once, waits for all of them, then powers off the rest:
        the group's VMs stop within one shutdown timeout of each other, never one by one."""
        moves = [self._stepper.begin(uuid, None) for uuid in vm_uuids]
        started_at = self._clock()
        for move in moves:
            self._stepper.emit(move, MoveStep.QUIESCE, StepPhase.STARTED, started_at, None)
        try:
            running = [move for move in moves if is_active(self._src.find_vm(move.uuid))]
            for move in running:
                if is_active(self._dst.find_vm(move.uuid)):
                    raise StepRefused(f"VM {move.uuid} runs on both hosts: refusing to touch either")
                self._src.request_shutdown(move.uuid)
            # One deadline for all: each wait ends when its VM is off or, at the latest, then.
            deadline = started_at + timedelta(seconds=self._shutdown_timeout_seconds)
            for move in running:
                ShutdownWatch(host=self._src, vm_uuid=move.uuid, deadline=deadline, clock=self._clock,
                              poll_interval_seconds=self._poll_interval_seconds).wait(self._sleep)
        except (EvacuatorError, StepRefused) as exc:
            for move in moves:
                self._stepper.emit(move, MoveStep.QUIESCE, StepPhase.FAILED, self._clock(), None,
                                   error=str(exc))
            raise MigrationError(f"group quiesce failed: {exc}", vm_uuid=moves[0].uuid,
                                 step=MoveStep.QUIESCE) from exc
        ended_at = self._clock()
        seconds = (ended_at - started_at).total_seconds()
        for move in moves:
            phase = StepPhase.FINISHED if move in running else StepPhase.SKIPPED
            self._stepper.emit(move, MoveStep.QUIESCE, phase, ended_at, seconds)
