"""Cold-moves one VM between two hypervisors in idempotent steps that each re-read where the VM really is."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from contextlib import ExitStack
from datetime import datetime, timedelta

import structlog

from evacuator.errors import EvacuatorError
from evacuator.hypervisor.model import Hypervisor, VmInfo, VmState, VolumeInfo, VolumeRef, is_active
from evacuator.migrate.converge import StoredDigests, converge_during_shutdown
from evacuator.migrate.final_steps import clean_up_source, verify_destination
from evacuator.migrate.precopy import copy_after_shutdown, precopy_during_shutdown
from evacuator.migrate.shutdown_watch import ShutdownWatch
from evacuator.migrate.stepper import Stepper
from evacuator.migrate.steps import (
    Action,
    MoveAttempt,
    MoveReport,
    MoveStep,
    PrecopiedVolume,
    StepEvent,
    StepRefused,
    TransferSlot,
    TryTransferSlot,
    copy_timeout_seconds,
    no_slot,
)

log = structlog.get_logger(__name__)


class ColdMigrator:
    """Moves a VM between hosts: quiesce, copy disks, verify them, define, start, verify, clean up.

    Invariants: at most one running copy; the source disks exist until the destination copy is verified (the
    definition reaches the destination only after its disks are verified, so "defined on the destination"
    means "disks verified"). `move` may be called again after any failure or crash and finishes the job.
    """

    def __init__(
        self,
        *,
        source: Hypervisor,
        destination: Hypervisor,
        clock: Callable[[], datetime],
        shutdown_timeout_seconds: float,
        sleep: Callable[[float], None],
        on_step: Callable[[StepEvent], None],
        poll_interval_seconds: float = 0.5,
        copy_timeout_base_seconds: float = 60.0,
        copy_min_bytes_per_second: float = 10 * 1024 * 1024,
        transfer_slot: TransferSlot = no_slot,
        precopy_slot: TryTransferSlot | None = None,
    ) -> None:
        self._stepper = Stepper(source=source, destination=destination, clock=clock, on_step=on_step)
        self._transfer_slot = transfer_slot
        # Set: a running VM's disks are copied while it shuts down, when a slot is free at once (precopy.py).
        self._precopy_slot = precopy_slot
        self._src = source
        self._dst = destination
        self._clock = clock
        self._shutdown_timeout_seconds = shutdown_timeout_seconds
        self._sleep = sleep
        self._poll_interval_seconds = poll_interval_seconds
        self._copy_timeout_base_seconds = copy_timeout_base_seconds
        self._copy_min_bytes_per_second = copy_min_bytes_per_second

    def move(
        self, vm_uuid: str, *, start_on_destination: bool | None = None,
        steps: Collection[MoveStep] | None = None,
        precopied: Mapping[VolumeRef, PrecopiedVolume] | None = None,
    ) -> MoveReport:
        """Moves the VM. `start_on_destination` None means "if it runs now"; pass the journaled value on a
        retry after the quiesce step, when the VM no longer runs anywhere. `steps` runs only those (in their
        order): a consistency group runs each phase for all its VMs before the next. `precopied`: what a
        window's pre-copy sent to this destination (evacuator/moves/window_copies.py); only blocks changed
        since are sent, and none of it counts before the last pass once the VM is off."""
        began = self._clock()
        move = self._stepper.begin(vm_uuid, start_on_destination)
        move.precopied = dict(precopied or {})
        chosen = [(step, action) for step, action in self._plan() if steps is None or step in steps]
        return self._stepper.run(move, chosen, transfer_slot=self._transfer_slot, began=began)

    def _plan(self) -> tuple[tuple[MoveStep, Action], ...]:
        return (
            (MoveStep.QUIESCE, self._quiesce),
            (MoveStep.COPY_DISKS, self._copy_disks),
            (MoveStep.VERIFY_DISKS, self._verify_disks),
            (MoveStep.DEFINE, self._define),
            (MoveStep.START, self._start),
            (MoveStep.VERIFY, lambda move: verify_destination(self._src, self._dst, move)),
            (MoveStep.CLEAN_UP, lambda move: clean_up_source(self._src, self._dst, move)),
        )

    # --- steps: each returns False when reality shows nothing is left to do ------------------------------

    def _quiesce(self, move: MoveAttempt) -> bool:
        src = self._src.find_vm(move.uuid)
        if not is_active(src):
            return False
        if is_active(self._dst.find_vm(move.uuid)):
            raise StepRefused("runs on both hosts: refusing to touch either")
        wait_seconds = self._shutdown_timeout_seconds
        try:
            self._src.request_shutdown(move.uuid)
        except EvacuatorError as exc:
            # A paused guest, for one, cannot take the request: waiting for it would be pointless.
            log.warning("vm_shutdown_request_refused", vm_uuid=move.uuid, error=str(exc))
            wait_seconds = 0.0
        watch = ShutdownWatch(host=self._src, vm_uuid=move.uuid, clock=self._clock,
                              deadline=self._clock() + timedelta(seconds=wait_seconds),
                              poll_interval_seconds=self._poll_interval_seconds)
        if wait_seconds > 0 and self._precopy_slot is not None and src is not None:
            self._precopy(move, src, self._precopy_slot, watch)
        watch.wait(self._sleep)
        move.forced_off = watch.forced_off
        return True

    def _precopy(self, move: MoveAttempt, src: VmInfo, slot: TryTransferSlot, watch: ShutdownWatch) -> None:
        """Copies the disks while the VM shuts down, if a transfer slot is free at once; when the VM is off
        by the end, the slot stays held for the last blocks."""
        with ExitStack() as stack:
            if not stack.enter_context(slot(move.uuid)):
                return
            if move.precopied:  # a window's pre-copy: only what changed since its last pass travels now
                move.precopied = converge_during_shutdown(
                    self._src, self._dst, move.precopied, off=watch.off, polled=watch.polled,
                    limit_for=self._limit_seconds, clock=self._clock)
            else:
                move.precopied = precopy_during_shutdown(
                    self._src, self._dst, src, watch=watch, clock=self._clock, limit_for=self._limit_seconds)
            if move.precopied and move.precopied.keys() >= set(src.volumes):
                # Every block this pass wrote is in: the destination digests its copies now, while the guest
                # shuts down, not after. Kept only where the last pass, once it is off, writes nothing.
                move.digests_ahead = StoredDigests(self._dst, src.volumes)
            if watch.off.is_set() and move.precopied:
                move.slot.enter_context(stack.pop_all())
                move.holding = True

    def _copy_disks(self, move: MoveAttempt) -> bool:
        if self._dst.find_vm(move.uuid) is not None:
            return False
        volumes = self._source_off(move).volumes
        # Everything pre-copied: the destination digests its copies while the last pass runs (below), unless
        # it began during the shutdown (_precopy).
        ahead = move.digests_ahead
        move.digests_ahead = None
        if ahead is None and move.precopied.keys() >= set(volumes):
            ahead = StoredDigests(self._dst, volumes)
        copied = copy_after_shutdown(self._src, self._dst, volumes, precopied=move.precopied,
                                     limit_for=self._limit_seconds, clock=self._clock)
        if ahead is not None:
            # Exact only for a copy the last pass left untouched: nothing was written to it after the digest
            # began (every earlier write had returned, and a copy made afresh has no patched_bytes). Any
            # other is digested again when verified.
            untouched = [ref for ref, c in copied.items() if c.patched_bytes == 0]
            move.stored_sha256.update(ahead.results(untouched))
        move.precopied = {}
        move.bytes_copied += sum(c.bytes_written for c in copied.values())
        move.sent_sha256.update((ref, c.sent_digest) for ref, c in copied.items())
        return True

    def _limit_seconds(self, volume: VolumeInfo) -> float:
        return copy_timeout_seconds(volume.allocation_bytes, self._copy_timeout_base_seconds,
                                    self._copy_min_bytes_per_second)

    def _verify_disks(self, move: MoveAttempt) -> bool:
        if self._dst.find_vm(move.uuid) is not None:
            return False
        src = self._source_off(move)
        for ref in src.volumes:
            source_volume = self._src.find_volume(ref.pool, ref.volume)
            copy = self._dst.find_volume(ref.pool, ref.volume)
            if source_volume is None or copy is None or copy.capacity_bytes != source_volume.capacity_bytes:
                raise StepRefused(f"volume {ref.pool}/{ref.volume} is missing or differs in capacity")
            # What was sent is what the source held (it is off): no need to read it a second time.
            source_sha256 = move.sent_sha256.get(ref) or self._src.volume_digest(ref.pool, ref.volume)
            # What the destination stored, read back there (see Hypervisor.volume_digest for how).
            copy_sha256 = move.stored_sha256.pop(ref, None) or self._dst.volume_digest(ref.pool, ref.volume)
            if source_sha256 != copy_sha256:
                raise StepRefused(f"volume {ref.pool}/{ref.volume} differs after copy: digest "
                                  f"{source_sha256} vs {copy_sha256}")
        return True

    def _define(self, move: MoveAttempt) -> bool:
        if self._dst.find_vm(move.uuid) is not None:
            return False
        self._source_off(move)
        defined = self._dst.define_vm(self._src.vm_definition_xml(move.uuid))
        if defined.uuid != move.uuid:
            raise StepRefused(f"destination defined it as {defined.uuid}")
        return True

    def _start(self, move: MoveAttempt) -> bool:
        dst = self._dst.find_vm(move.uuid)
        if not move.run_after or (dst is not None and dst.state is VmState.RUNNING):
            return False
        if is_active(self._src.find_vm(move.uuid)):
            raise StepRefused(f"runs again on {self._src.name}: not starting a second copy")
        self._dst.start_vm(move.uuid)
        return True

    def _source_off(self, move: MoveAttempt) -> VmInfo:
        src = self._src.find_vm(move.uuid)
        if src is None:
            raise StepRefused(f"is defined on neither {self._src.name} nor {self._dst.name}")
        if is_active(src):
            raise StepRefused(f"runs on {self._src.name}: its disks must not be copied while in use")
        return src
