"""Cold-moves one VM between two hypervisors in idempotent steps that each re-read where the VM really is."""

from __future__ import annotations

from collections.abc import Callable, Collection
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog

from evacuator.errors import EvacuatorError, MigrationError
from evacuator.hypervisor.model import Hypervisor, VmInfo, VmState, VolumeInfo, VolumeRef, is_active
from evacuator.migrate.precopy import PrecopiedVolume, copy_after_shutdown, precopy_during_shutdown
from evacuator.migrate.shutdown_watch import ShutdownWatch
from evacuator.migrate.steps import (
    EVENT_NAMES,
    TRANSFER_STEPS,
    MoveReport,
    MoveStep,
    StepEvent,
    StepPhase,
    StepTiming,
    TransferSlot,
    TryTransferSlot,
    copy_timeout_seconds,
    no_slot,
)

log = structlog.get_logger(__name__)


class _Refused(Exception):
    """Raised inside a step when reality forbids going on; `_run` turns it into a MigrationError."""


@dataclass(slots=True, kw_only=True)
class _Move:
    """Working state of one move attempt (private, mutable by design)."""

    uuid: str
    name: str
    run_after: bool
    bytes_copied: int = 0
    forced_off: bool = False
    sent_sha256: dict[VolumeRef, str] = field(default_factory=dict)
    precopied: dict[VolumeRef, PrecopiedVolume] = field(default_factory=dict)
    # The transfer slot the steps hold: taken for the disks' steps, or kept from a pre-copy that ended
    # with the VM off, so its last blocks follow at once.
    slot: ExitStack = field(default_factory=ExitStack)
    holding: bool = False


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
        self._transfer_slot = transfer_slot
        # Set: a running VM's disks are copied while it shuts down, when a slot is free at once (precopy.py).
        self._precopy_slot = precopy_slot
        self._src = source
        self._dst = destination
        self._clock = clock
        self._shutdown_timeout_seconds = shutdown_timeout_seconds
        self._sleep = sleep
        self._on_step = on_step
        self._poll_interval_seconds = poll_interval_seconds
        self._copy_timeout_base_seconds = copy_timeout_base_seconds
        self._copy_min_bytes_per_second = copy_min_bytes_per_second

    def move(
        self, vm_uuid: str, *, start_on_destination: bool | None = None,
        steps: Collection[MoveStep] | None = None,
    ) -> MoveReport:
        """Moves the VM. `start_on_destination` None means "if it runs now"; pass the journaled value on a
        retry after the quiesce step, when the VM no longer runs anywhere. `steps` runs only those (in their
        order): a consistency group runs each phase for all its VMs before the next."""
        began = self._clock()
        move = self._begin(vm_uuid.lower(), start_on_destination)
        log.info("move_started", vm_uuid=move.uuid, vm_name=move.name, source=self._src.name,
                 destination=self._dst.name, start_on_destination=move.run_after)
        chosen = [(step, action) for step, action in self._plan() if steps is None or step in steps]
        timings = []
        with move.slot:
            for step, action in chosen:
                # The disks travel under a transfer slot (the engine's caps); shutdown and start do not.
                if (step in TRANSFER_STEPS) != move.holding:
                    if move.holding:
                        move.slot.close()
                    else:
                        move.slot.enter_context(self._transfer_slot(move.uuid))
                    move.holding = not move.holding
                timings.append(self._run(move, step, action))
        report = MoveReport(
            vm_uuid=move.uuid, vm_name=move.name, source=self._src.name, destination=self._dst.name,
            steps=tuple(timings), bytes_copied=move.bytes_copied, forced_off=move.forced_off,
            running_on_destination=move.run_after, seconds=(self._clock() - began).total_seconds(),
        )
        log.info("move_finished", vm_uuid=move.uuid, seconds=report.seconds, bytes_copied=report.bytes_copied)
        return report

    def _plan(self) -> tuple[tuple[MoveStep, Callable[[_Move], bool]], ...]:
        return (
            (MoveStep.QUIESCE, self._quiesce),
            (MoveStep.COPY_DISKS, self._copy_disks),
            (MoveStep.VERIFY_DISKS, self._verify_disks),
            (MoveStep.DEFINE, self._define),
            (MoveStep.START, self._start),
            (MoveStep.VERIFY, self._verify),
            (MoveStep.CLEAN_UP, self._clean_up),
        )

    def _begin(self, uuid: str, start_on_destination: bool | None) -> _Move:
        def refuse(message: str) -> MigrationError:
            return MigrationError(f"VM {uuid} {message}", vm_uuid=uuid, step="locate")

        try:
            src, dst = self._src.find_vm(uuid), self._dst.find_vm(uuid)
        except EvacuatorError as exc:
            raise refuse(f"cannot be located: {exc}") from exc
        if src is None and dst is None:
            raise refuse(f"is defined on neither {self._src.name} nor {self._dst.name}")
        if dst is not None and is_active(src):
            raise refuse(f"runs on {self._src.name} while also defined on {self._dst.name} (running there "
                         "too, or a copy that may be stale): refusing to touch either, resolve by hand")
        known = src if src is not None else dst
        assert known is not None
        run_after = start_on_destination
        if run_after is None:
            run_after = is_active(src) or is_active(dst)
        return _Move(uuid=uuid, name=known.name, run_after=run_after)

    def _run(self, move: _Move, step: MoveStep, action: Callable[[_Move], bool]) -> StepTiming:
        started_at = self._clock()
        self._emit(move, step, StepPhase.STARTED, started_at, None)
        try:
            did_work = action(move)
        except (EvacuatorError, _Refused) as exc:
            failed_at = self._clock()
            seconds = (failed_at - started_at).total_seconds()
            self._emit(move, step, StepPhase.FAILED, failed_at, seconds, error=str(exc))
            raise MigrationError(f"VM {move.uuid}: step {step} failed: {exc}",
                                 vm_uuid=move.uuid, step=step) from exc
        ended_at = self._clock()
        seconds = (ended_at - started_at).total_seconds()
        self._emit(move, step, StepPhase.FINISHED if did_work else StepPhase.SKIPPED, ended_at, seconds)
        return StepTiming(step=step, skipped=not did_work, seconds=seconds)

    def _emit(self, move: _Move, step: MoveStep, phase: StepPhase, at: datetime, seconds: float | None,
              error: str | None = None) -> None:
        emit = log.warning if phase is StepPhase.FAILED else log.info
        emit(EVENT_NAMES[phase], vm_uuid=move.uuid, step=str(step), seconds=seconds, error=error)
        event = StepEvent(vm_uuid=move.uuid, step=step, phase=phase, at=at, seconds=seconds, error=error)
        self._on_step(event)

    # --- steps: each returns False when reality shows nothing is left to do ------------------------------

    def _quiesce(self, move: _Move) -> bool:
        src = self._src.find_vm(move.uuid)
        if not is_active(src):
            return False
        if is_active(self._dst.find_vm(move.uuid)):
            raise _Refused("runs on both hosts: refusing to touch either")
        wait_seconds = self._shutdown_timeout_seconds
        try:
            self._src.request_shutdown(move.uuid)
        except EvacuatorError as exc:
            # A paused guest, for one, cannot take the request: waiting for it would be pointless.
            log.warning("vm_shutdown_request_refused", vm_uuid=move.uuid, error=str(exc))
            wait_seconds = 0.0
        watch = self._shutdown_watch(move.uuid, self._clock() + timedelta(seconds=wait_seconds))
        if wait_seconds > 0 and self._precopy_slot is not None and src is not None:
            self._precopy(move, src, self._precopy_slot, watch)
        watch.wait(self._sleep)
        move.forced_off = watch.forced_off
        return True

    def _shutdown_watch(self, vm_uuid: str, deadline: datetime) -> ShutdownWatch:
        return ShutdownWatch(host=self._src, vm_uuid=vm_uuid, deadline=deadline, clock=self._clock,
                             poll_interval_seconds=self._poll_interval_seconds)

    def _precopy(self, move: _Move, src: VmInfo, slot: TryTransferSlot, watch: ShutdownWatch) -> None:
        """Copies the disks while the VM shuts down, if a transfer slot is free at once; when the VM is off
        by the end, the slot stays held for the last blocks."""
        with ExitStack() as stack:
            if not stack.enter_context(slot(move.uuid)):
                return
            move.precopied = precopy_during_shutdown(
                self._src, self._dst, src, watch=watch, clock=self._clock, limit_for=self._limit_seconds)
            if watch.off.is_set() and move.precopied:
                move.slot.enter_context(stack.pop_all())
                move.holding = True

    def _copy_disks(self, move: _Move) -> bool:
        if self._dst.find_vm(move.uuid) is not None:
            return False
        copied = copy_after_shutdown(self._src, self._dst, self._source_off(move).volumes,
                                     precopied=move.precopied, limit_for=self._limit_seconds,
                                     clock=self._clock)
        move.precopied = {}
        move.bytes_copied += sum(c.bytes_written for c in copied.values())
        move.sent_sha256.update((ref, c.sent_digest) for ref, c in copied.items())
        return True

    def _limit_seconds(self, volume: VolumeInfo) -> float:
        return copy_timeout_seconds(volume.allocation_bytes, self._copy_timeout_base_seconds,
                                    self._copy_min_bytes_per_second)

    def _verify_disks(self, move: _Move) -> bool:
        if self._dst.find_vm(move.uuid) is not None:
            return False
        src = self._source_off(move)
        for ref in src.volumes:
            source_volume = self._src.find_volume(ref.pool, ref.volume)
            copy = self._dst.find_volume(ref.pool, ref.volume)
            if source_volume is None or copy is None or copy.capacity_bytes != source_volume.capacity_bytes:
                raise _Refused(f"volume {ref.pool}/{ref.volume} is missing or differs in capacity")
            # What was sent is what the source held (it is off): no need to read it a second time.
            source_sha256 = move.sent_sha256.get(ref) or self._src.volume_digest(ref.pool, ref.volume)
            # What the destination stored, read back there (see Hypervisor.volume_digest for how).
            copy_sha256 = self._dst.volume_digest(ref.pool, ref.volume)
            if source_sha256 != copy_sha256:
                raise _Refused(f"volume {ref.pool}/{ref.volume} differs after copy: digest {source_sha256} "
                               f"vs {copy_sha256}")
        return True

    def _define(self, move: _Move) -> bool:
        if self._dst.find_vm(move.uuid) is not None:
            return False
        self._source_off(move)
        defined = self._dst.define_vm(self._src.vm_definition_xml(move.uuid))
        if defined.uuid != move.uuid:
            raise _Refused(f"destination defined it as {defined.uuid}")
        return True

    def _start(self, move: _Move) -> bool:
        dst = self._dst.find_vm(move.uuid)
        if not move.run_after or (dst is not None and dst.state is VmState.RUNNING):
            return False
        if is_active(self._src.find_vm(move.uuid)):
            raise _Refused(f"runs again on {self._src.name}: not starting a second copy")
        self._dst.start_vm(move.uuid)
        return True

    def _verify(self, move: _Move) -> bool:
        dst = self._dst.find_vm(move.uuid)
        if dst is None:
            raise _Refused(f"is not defined on {self._dst.name}")
        if move.run_after and dst.state is not VmState.RUNNING:
            raise _Refused(f"is {dst.state} on {self._dst.name}, expected running")
        src = self._src.find_vm(move.uuid)
        if src is not None:
            for attr in ("name", "macs", "volumes", "facts"):
                if getattr(src, attr) != getattr(dst, attr):
                    raise _Refused(f"{attr} differs: {getattr(src, attr)!r} on {self._src.name}, "
                                   f"{getattr(dst, attr)!r} on {self._dst.name}")
        for ref in dst.volumes:
            if self._dst.find_volume(ref.pool, ref.volume) is None:
                raise _Refused(f"volume {ref.pool}/{ref.volume} missing on destination")
        return True

    def _clean_up(self, move: _Move) -> bool:
        dst = self._dst.find_vm(move.uuid)
        src = self._src.find_vm(move.uuid)
        if dst is None:
            raise _Refused(f"is not defined on {self._dst.name}: keeping the source")
        leftovers = [ref for ref in dst.volumes if self._src.find_volume(ref.pool, ref.volume) is not None]
        if src is None and not leftovers:
            return False
        if src is not None:
            if is_active(src):
                raise _Refused(f"runs on {self._src.name}: not undefining it")
            self._src.undefine_vm(move.uuid)
        for ref in leftovers:
            self._src.delete_volume(ref.pool, ref.volume)
        return True

    def _source_off(self, move: _Move) -> VmInfo:
        src = self._src.find_vm(move.uuid)
        if src is None:
            raise _Refused(f"is defined on neither {self._src.name} nor {self._dst.name}")
        if is_active(src):
            raise _Refused(f"runs on {self._src.name}: its disks must not be copied while in use")
        return src
