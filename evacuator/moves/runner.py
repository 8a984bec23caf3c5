"""Runs one journaled move to an ending: retries with backoff, then rollback and the next candidate host."""

from __future__ import annotations

import structlog

from evacuator.errors import MigrationError
from evacuator.hypervisor.facts import MoveMethod
from evacuator.hypervisor.model import Hypervisor, VolumeRef
from evacuator.migrate.steps import PrecopiedVolume, StepEvent
from evacuator.moves.attempts import Attempts, Outcomes
from evacuator.moves.destinations import Held, Nowhere
from evacuator.moves.rollback import RollbackOutcome
from evacuator.moves.state import MoveRecord, MoveState, Phase
from evacuator.moves.window_copies import WindowCopies

log = structlog.get_logger(__name__)


class MoveRunner:
    """Takes one VM's journaled move from wherever it stands to done, restored_on_source or failed."""

    def __init__(self, attempts: Attempts, *, window: WindowCopies | None = None) -> None:
        self._attempts = attempts
        self._window = window

    def execute(self, record: MoveRecord, outcomes: Outcomes) -> None:
        attempts = self._attempts
        if record.state is MoveState.ROLLING_BACK:
            reason = record.error or "interrupted"
            attempts.end(attempts.roll_back(record, reason, record.destination, last_try=True), outcomes)
            return
        tried: list[str] = []
        destinations = attempts.destinations
        # A window's pre-copy hands over the destination it chose, claimed and journaled, and what it sent.
        handed = None if self._window is None else self._window.take(record.vm_uuid, record.destination)
        precopied: dict[VolumeRef, PrecopiedVolume] = {} if handed is None else handed.precopied
        choice: Held | Nowhere
        if handed is not None:
            choice = handed.held
        else:
            choice = (destinations.resume([record], record.destination) if record.destination
                      else destinations.choose([record], tried, only=record.return_to))  # fmt: skip
        while True:
            if isinstance(choice, Nowhere):
                attempts.fail_unplaced(record, outcomes, choice)
                return
            destination = choice.host
            tried.append(destination)
            # Held until the move ended: verified running there, or rolled back (the claim's room is then
            # either counted by the destination's own accounting, or free again).
            with choice:
                try:
                    record = self._retried(record, destination, precopied)
                except Exception as exc:  # whatever stopped the move, the journal and the tenant hear of it
                    record = attempts.journal.get(record.vm_uuid) or record
                    reason = str(exc)
                else:
                    outcomes.moved(record)
                    return
                # Chosen (and held) before rolling back: only when no other host will be tried may the VM
                # restart on its source.
                choice = destinations.choose([record], tried, only=record.return_to)
                last_try = isinstance(choice, Nowhere)
                record, rollback = attempts.roll_back(record, reason, destination, last_try=last_try)
            if last_try or rollback.outcome is not RollbackOutcome.ON_SOURCE:
                if isinstance(choice, Held):
                    choice.release()
                attempts.end((record, rollback), outcomes)
                return
            log.info("move_next_candidate", vm_uuid=record.vm_uuid, failed_on=destination,
                     next_destination=choice.host if isinstance(choice, Held) else None)
            record = attempts.journal.advance(record, MoveState.WAITING, Phase.DUE, attempts.clock(),
                                              destination=None)

    def _retried(self, record: MoveRecord, destination: str,
                 precopied: dict[VolumeRef, PrecopiedVolume]) -> MoveRecord:  # fmt: skip
        """Runs the (idempotent) move, again after a failure with backoff, on fresh connections. `precopied`
        counts for the first attempt only (it is emptied): a failed one may have left its copies anywhere."""
        attempts = self._attempts
        for attempt in attempts.retrying():
            with attempt:
                current = attempts.journal.get(record.vm_uuid) or record
                with attempts.open_host(attempts.config.host) as source, \
                        attempts.open_host(destination) as dest:  # fmt: skip
                    handed = dict(precopied)
                    precopied.clear()
                    return self._run(current, source, dest, destination, handed)
        raise AssertionError("tenacity either returns or reraises")  # pragma: no cover

    def _run(self, record: MoveRecord, source: Hypervisor, dest: Hypervisor, destination: str,
             precopied: dict[VolumeRef, PrecopiedVolume]) -> MoveRecord:  # fmt: skip
        attempts = self._attempts
        record = attempts.intent(record, source, dest, destination)
        holder = [record]

        def on_step(event: StepEvent) -> None:
            holder.append(attempts.on_step(holder[-1], event, source, dest))

        vm = source.find_vm(record.vm_uuid) or dest.find_vm(record.vm_uuid)
        method = (None if vm is None else vm.facts.method) or MoveMethod.COLD
        if method is not MoveMethod.COLD and record.start_on_destination:
            try:
                live = attempts.migrators.live(source, dest, on_step=on_step)
                with attempts.transfer_slot(destination, [record])(record.vm_uuid):
                    live.move(record.vm_uuid, start_on_destination=True)
                attempts.record_origin(dest, record)
                # libvirt copies a live move's disks: their bytes are not counted (None, not 0).
                return attempts.done(holder[-1], destination)
            except MigrationError as exc:
                if method is MoveMethod.LIVE:
                    raise
                # live_then_cold: a failed live migration leaves the guest running on the source.
                log.warning("live_move_failed_trying_cold", vm_uuid=record.vm_uuid, error=str(exc))
        cold = attempts.migrators.cold(
            source, dest, on_step=on_step, transfer_slot=attempts.transfer_slot(dest.name, [record]),
            precopy_slot=attempts.precopy_slot(dest.name))
        report = cold.move(record.vm_uuid, start_on_destination=record.start_on_destination,
                           precopied=precopied)
        attempts.record_origin(dest, record)
        return attempts.done(holder[-1], destination, bytes_copied=report.bytes_copied)
