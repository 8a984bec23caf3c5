"""Moves a consistency group all or nothing: quiesced together, copied, started in boot order, cleaned."""

from __future__ import annotations

from collections.abc import Sequence

import structlog

from evacuator.hypervisor.model import VolumeRef
from evacuator.migrate.steps import MoveStep, PrecopiedVolume, StepEvent
from evacuator.moves.attempts import Attempts, Outcomes
from evacuator.moves.destinations import Held, Nowhere
from evacuator.moves.rollback import Rollback
from evacuator.moves.state import MoveRecord, MoveState, boot_ordered
from evacuator.moves.window_copies import WindowCopies

log = structlog.get_logger(__name__)

# Every VM of the group is ready on the destination (copied, verified, defined) before any starts there,
# and every one runs there before any source is cleaned: until then the whole group can go back.
_PREPARE = frozenset({MoveStep.COPY_DISKS, MoveStep.VERIFY_DISKS, MoveStep.DEFINE})
_START = frozenset({MoveStep.START, MoveStep.VERIFY})
_CLEAN = frozenset({MoveStep.CLEAN_UP})


class GroupRunner:
    """Takes a consistency group's journaled moves to their endings, one destination for the whole group."""

    def __init__(self, attempts: Attempts, *, window: WindowCopies | None = None) -> None:
        self._attempts = attempts
        self._window = window

    def execute_group(self, records: Sequence[MoveRecord], outcomes: Outcomes) -> None:
        attempts = self._attempts
        group = records[0].group
        ordered = boot_ordered(records)
        journaled = next((r.destination for r in ordered if r.destination), None)
        # A group moves back only as a whole, to one origin (the first member's: they left together).
        back = next((r.return_to for r in ordered if r.return_to), None)
        # The group's window pre-copy hands over the destination it chose, claimed and journaled, and what
        # it sent there for every member.
        handed = None if self._window is None or group is None else self._window.take_group(group, journaled)
        precopied: dict[VolumeRef, PrecopiedVolume] = {} if handed is None else handed.precopied
        choice: Held | Nowhere
        if handed is not None:
            choice = handed.held
        else:
            choice = (attempts.destinations.resume(ordered, journaled) if journaled
                      else attempts.destinations.choose(ordered, (), only=back))  # fmt: skip
        if isinstance(choice, Nowhere):
            for record in ordered:
                attempts.fail_unplaced(record, outcomes, choice)
            return
        destination = choice.host
        log.info("group_move_started", group=group, vm_uuids=[r.vm_uuid for r in ordered],
                 destination=destination)
        with choice:  # held until the whole group ran there, or came back
            rolling_back = [r for r in ordered if r.state is MoveState.ROLLING_BACK]
            if rolling_back:
                # A restart in the middle of a group rollback: finish it, for every member.
                self._roll_back_group(ordered, rolling_back[0].error or "interrupted", destination, outcomes)
                return
            try:
                moved = self._retried(ordered, destination, precopied)
            except Exception as exc:  # all or nothing: any member's failure sends the whole group back
                reason = f"group {group}: {exc}"
                self._roll_back_group(ordered, reason, destination, outcomes)
                return
        log.info("group_move_finished", group=group, destination=destination)
        for record in moved:
            outcomes.moved(record)

    def _retried(self, ordered: list[MoveRecord], destination: str,
                 precopied: dict[VolumeRef, PrecopiedVolume]) -> list[MoveRecord]:  # fmt: skip
        """`precopied` counts for the first attempt only (it is emptied): a failed one may have left its
        copies anywhere."""
        for attempt in self._attempts.retrying():
            with attempt:
                handed = dict(precopied)
                precopied.clear()
                return self._once(ordered, destination, handed)
        raise AssertionError("tenacity either returns or reraises")  # pragma: no cover

    def _once(self, ordered: list[MoveRecord], destination: str,
              precopied: dict[VolumeRef, PrecopiedVolume]) -> list[MoveRecord]:  # fmt: skip
        attempts = self._attempts
        with attempts.open_host(attempts.config.host) as source, attempts.open_host(destination) as dest:
            latest = {r.vm_uuid: attempts.journal.get(r.vm_uuid) or r for r in ordered}
            records = {uuid: attempts.intent(r, source, dest, destination) for uuid, r in latest.items()}

            def on_step(event: StepEvent) -> None:
                records[event.vm_uuid] = attempts.on_step(records[event.vm_uuid], event, source, dest)

            slot = attempts.transfer_slot(destination, ordered)
            uuids = [r.vm_uuid for r in ordered]
            attempts.migrators.group_quiesce(source, dest, on_step=on_step).quiesce_together(uuids)
            cold = attempts.migrators.cold(source, dest, on_step=on_step, transfer_slot=slot)
            copied = dict.fromkeys(uuids, 0)
            for phase in (_PREPARE, _START, _CLEAN):
                for uuid in uuids:
                    # Only the disks' step uses what the window pre-copied: the blocks changed since travel.
                    report = cold.move(uuid, start_on_destination=records[uuid].start_on_destination,
                                       steps=phase, precopied=precopied if phase is _PREPARE else None)
                    copied[uuid] += report.bytes_copied
            for uuid in uuids:
                attempts.record_origin(dest, records[uuid])
            return [attempts.done(records[uuid], destination, bytes_copied=copied[uuid]) for uuid in uuids]

    def _roll_back_group(
        self, ordered: list[MoveRecord], reason: str, destination: str, outcomes: Outcomes
    ) -> None:
        attempts = self._attempts
        ends: list[tuple[MoveRecord, Rollback | None]] = []
        for record in ordered:  # boot order: the group comes back up on its source in its own order
            current = attempts.journal.get(record.vm_uuid) or record
            if current.state is MoveState.DONE:
                continue
            ends.append(attempts.roll_back(current, reason, destination, last_try=True))
        for ended in ends:
            attempts.end(ended, outcomes)
