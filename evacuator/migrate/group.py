"""The cold migrator of a consistency group: its VMs are asked to shut down at once, not one by one."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from evacuator.errors import EvacuatorError, MigrationError
from evacuator.hypervisor.model import is_active
from evacuator.migrate.cold import ColdMigrator, _Refused
from evacuator.migrate.steps import MoveStep, StepPhase


class GroupColdMigrator(ColdMigrator):
    """A ColdMigrator that can also quiesce several VMs together (then `move(..., steps=...)` each)."""

    def quiesce_together(self, vm_uuids: Sequence[str]) -> None:
        """Asks every VM of a group to shut down at once, waits for all of them, then powers off the rest:
        the group's VMs stop within one shutdown timeout of each other, never one by one."""
        moves = [self._begin(uuid.lower(), None) for uuid in vm_uuids]
        started_at = self._clock()
        for move in moves:
            self._emit(move, MoveStep.QUIESCE, StepPhase.STARTED, started_at, None)
        try:
            running = [move for move in moves if is_active(self._src.find_vm(move.uuid))]
            for move in running:
                if is_active(self._dst.find_vm(move.uuid)):
                    raise _Refused(f"VM {move.uuid} runs on both hosts: refusing to touch either")
                self._src.request_shutdown(move.uuid)
            # One deadline for all: each wait ends when its VM is off or, at the latest, then.
            deadline = started_at + timedelta(seconds=self._shutdown_timeout_seconds)
            for move in running:
                self._shutdown_watch(move.uuid, deadline).wait(self._sleep)
        except (EvacuatorError, _Refused) as exc:
            for move in moves:
                self._emit(move, MoveStep.QUIESCE, StepPhase.FAILED, self._clock(), None, error=str(exc))
            raise MigrationError(f"group quiesce failed: {exc}", vm_uuid=moves[0].uuid,
                                 step=MoveStep.QUIESCE) from exc
        ended_at = self._clock()
        seconds = (ended_at - started_at).total_seconds()
        for move in moves:
            phase = StepPhase.FINISHED if move in running else StepPhase.SKIPPED
            self._emit(move, MoveStep.QUIESCE, phase, ended_at, seconds)
