"""Moves a consistency group all or nothing: quiesced together, copied, started in boot order, cleaned."""

from __future__ import annotations

from collections.abc import Sequence

import structlog

from evacuator.migrate.group import GroupColdMigrator
from evacuator.migrate.steps import MoveStep, StepEvent
from evacuator.moves.rollback import Rollback
from evacuator.moves.runner import MoveRunner, Outcomes
from evacuator.moves.state import MoveRecord, MoveState, Phase

log = structlog.get_logger(__name__)

# Every VM of the group is ready on the destination (copied, verified, defined) before any starts there,
# and every one runs there before any source is cleaned: until then the whole group can go back.
_PREPARE = frozenset({MoveStep.COPY_DISKS, MoveStep.VERIFY_DISKS, MoveStep.DEFINE})
_START = frozenset({MoveStep.START, MoveStep.VERIFY})
_CLEAN = frozenset({MoveStep.CLEAN_UP})


def boot_ordered(records: Sequence[MoveRecord]) -> list[MoveRecord]:
    return sorted(records, key=lambda r: (r.boot_order, r.vm_name, r.vm_uuid))


class GroupRunner(MoveRunner):
    """A MoveRunner that also moves consistency groups (one destination for the whole group)."""

    def execute_group(self, records: Sequence[MoveRecord], outcomes: Outcomes) -> None:
        group = records[0].group
        ordered = boot_ordered(records)
        destination = next((r.destination for r in ordered if r.destination), None) or self._next_peer([])
        log.info("group_move_started", group=group, vm_uuids=[r.vm_uuid for r in ordered],
                 destination=destination)
        rolling_back = [r for r in ordered if r.state is MoveState.ROLLING_BACK]
        if rolling_back and destination is not None:
            # A restart in the middle of a group rollback: finish it, for every member.
            self._roll_back_group(ordered, rolling_back[0].error or "interrupted", destination, outcomes)
            return
        if destination is None:
            reason = "no destination host is configured"
            for record in ordered:
                failed = self._journal.advance(record, MoveState.FAILED, Phase.FAILED, self._clock(),
                                               error=reason)
                self._end((failed, None), outcomes)
            return
        try:
            moved = self._group_attempts(ordered, destination)
        except Exception as exc:  # all or nothing: any member's failure sends the whole group back
            reason = f"group {group}: {exc}"
            self._roll_back_group(ordered, reason, destination, outcomes)
            return
        log.info("group_move_finished", group=group, destination=destination)
        for record in moved:
            outcomes.moved(record)

    def _group_attempts(self, ordered: list[MoveRecord], destination: str) -> list[MoveRecord]:
        for attempt in self._retrying():
            with attempt:
                return self._group_once(ordered, destination)
        raise AssertionError("tenacity either returns or reraises")  # pragma: no cover

    def _group_once(self, ordered: list[MoveRecord], destination: str) -> list[MoveRecord]:
        with self._open_host(self._config.host) as source, self._open_host(destination) as dest:
            latest = {r.vm_uuid: self._journal.get(r.vm_uuid) or r for r in ordered}
            records = {uuid: self._intent(r, source, dest, destination) for uuid, r in latest.items()}

            def on_step(event: StepEvent) -> None:
                records[event.vm_uuid] = self._on_step(records[event.vm_uuid], event, source, dest)

            config = self._config
            migrator = GroupColdMigrator(
                source=source, destination=dest, clock=self._clock,
                shutdown_timeout_seconds=config.shutdown_timeout_seconds, sleep=self._sleep, on_step=on_step,
                poll_interval_seconds=config.poll_interval_seconds,
                copy_timeout_base_seconds=config.copy_timeout_base_seconds,
                copy_min_bytes_per_second=config.copy_min_bytes_per_second,
                transfer_slot=self.transfer_slot(destination, max(r.priority for r in ordered)),
            )  # fmt: skip
            uuids = [r.vm_uuid for r in ordered]
            migrator.quiesce_together(uuids)
            for phase in (_PREPARE, _START, _CLEAN):
                for uuid in uuids:
                    migrator.move(uuid, start_on_destination=records[uuid].start_on_destination, steps=phase)
            return [self._done(records[uuid], destination) for uuid in uuids]

    def _roll_back_group(
        self, ordered: list[MoveRecord], reason: str, destination: str, outcomes: Outcomes
    ) -> None:
        ends: list[tuple[MoveRecord, Rollback | None]] = []
        for record in ordered:  # boot order: the group comes back up on its source in its own order
            current = self._journal.get(record.vm_uuid) or record
            if current.state is MoveState.DONE:
                continue
            ends.append(self._roll_back(current, reason, destination, last_try=True))
        for ended in ends:
            self._end(ended, outcomes)
