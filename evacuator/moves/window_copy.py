"""One window's pre-copy: a single VM's, or a consistency group's (all its VMs to the one destination the
group will move to); the rules are window_copies.py's."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import structlog

from evacuator.errors import EvacuatorError
from evacuator.hypervisor.facts import MoveMethod
from evacuator.hypervisor.model import Hypervisor, VmInfo, VolumeInfo, VolumeRef
from evacuator.migrate.converge import PassStopped, converge_volume, first_pass
from evacuator.migrate.steps import PrecopiedVolume
from evacuator.moves.attempts import Attempts
from evacuator.moves.destinations import Held, Nowhere
from evacuator.moves.state import PENDING, TERMINAL, MoveRecord, Phase

log = structlog.get_logger(__name__)

# How long a pre-copy that found no free slot waits before it looks again.
SLOT_RETRY_SECONDS = 1.0
# How often a pass looks at the journal for a cancelled move (a SQLite read).
JOURNAL_LOOK_SECONDS = 0.5
# How often a pre-copy held by the cloud-wide pause asks the broker again whether it still holds.
PAUSE_LOOK_SECONDS = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Handover:
    """What a window's pre-copy hands its move: the destination it holds, and what each volume got there (a
    group's: every member's volumes)."""

    held: Held
    precopied: dict[VolumeRef, PrecopiedVolume]


class WindowCopy:
    """Pre-copies `vm_uuids` (one VM, or every VM of a group) on a thread of its own."""

    def __init__(self, attempts: Attempts, *, key: str, vm_uuids: Sequence[str], group: str | None,
                 limit_for: Callable[[VolumeInfo], float], paused: Callable[[], bool],
                 journal_lock: threading.Lock, ended: Callable[[WindowCopy], None]) -> None:  # fmt: skip
        self._attempts = attempts
        self.key = key
        self._vm_uuids = tuple(vm_uuids)
        # What its log lines name: the VM, or the group and its VMs.
        self._context: dict[str, object] = ({"vm_uuid": self._vm_uuids[0]} if group is None
                                            else {"group": group, "vm_uuids": list(self._vm_uuids)})
        self._journal_lock = journal_lock
        self._limit_for = limit_for
        self._paused = paused
        self._ended = ended
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._handing = False
        self._held: Held | None = None
        self._precopied: dict[VolumeRef, PrecopiedVolume] = {}
        self._looked_at: datetime | None = None
        self._gone = False
        self.thread = threading.Thread(target=self._run, name=f"evacuator-window-{key[:14]}", daemon=True)

    def hand_over(self) -> Handover | None:
        with self._lock:
            self._handing = True
        self.stopping.set()
        self.thread.join()
        held = self._held
        return None if held is None else Handover(held=held, precopied=dict(self._precopied))

    def _run(self) -> None:
        try:
            held = self._destination()
            if held is not None:
                self._copy(held)
        except Exception as exc:  # a pre-copy is optional: its failure never touches the move
            log.warning("window_precopy_failed", **self._context, error=str(exc)[:500])
            self._precopied = {}
        finally:
            with self._lock:
                if not self._handing and self._held is not None:
                    self._held.release()
                    self._held = None
            self._ended(self)

    def _windows_open(self) -> list[MoveRecord] | None:
        """Every VM's record while all are in their windows (none due yet), else None."""
        records = [self._attempts.journal.get(vm_uuid) for vm_uuid in self._vm_uuids]
        if any(r is None or r.state not in PENDING or r.phase is Phase.DUE for r in records):
            return None
        return [r for r in records if r is not None]

    def _destination(self) -> Held | None:
        """Chooses and claims the destination (again, with the same claim, after a restart) and journals it,
        so a restart resumes toward it. None when there is none now: the move chooses when it is due."""
        attempts = self._attempts
        records = self._windows_open()
        if records is None:
            return None
        with attempts.open_host(attempts.config.host) as source:
            vms = [vm for vm in map(source.find_vm, self._vm_uuids) if vm is not None]
        if len(vms) != len(self._vm_uuids):
            return None
        if records[0].group is None and (vms[0].facts.method or MoveMethod.COLD) is not MoveMethod.COLD:
            return None  # a live move's disks travel with its memory (a group always moves cold)
        journaled = next((r.destination for r in records if r.destination), None)
        back = next((r.return_to for r in records if r.return_to), None)
        destinations = attempts.destinations
        choice = (destinations.resume(records, journaled) if journaled
                  else destinations.choose(records, (), only=back))  # fmt: skip
        if isinstance(choice, Nowhere):
            log.info("window_precopy_unplaced", **self._context, reason=choice.reason)
            return None
        with self._lock:
            self._held = choice
        with self._journal_lock:
            current = self._windows_open()
            if current is None:
                return None  # due meanwhile: the move chooses (or resumes) its destination itself
            for record in current:
                attempts.journal.advance(record, record.state, Phase.PRECOPYING, attempts.clock(),
                                         destination=choice.host)
        return choice

    def _copy(self, held: Held) -> None:
        attempts = self._attempts
        with attempts.open_host(attempts.config.host) as source, attempts.open_host(held.host) as dest:
            vms = [vm for vm in map(source.find_vm, self._vm_uuids) if vm is not None]
            if len(vms) != len(self._vm_uuids):
                return
            log.info("window_precopy_started", **self._context, destination=held.host)
            passes, held_by_pause = 0, False
            while not self.stopping.is_set():
                if self._move_ended():
                    self._remove(dest, vms)
                    return
                if self._paused():
                    if not held_by_pause:
                        log.info("window_precopy_paused", **self._context, destination=held.host)
                    held_by_pause = True
                    self.stopping.wait(PAUSE_LOOK_SECONDS)
                    continue
                if held_by_pause:
                    log.info("window_precopy_resumed", **self._context, destination=held.host)
                    held_by_pause = False
                with attempts.window_slot(held.host)(self.key) as got:
                    got = got and not attempts.transfer_wanted()
                    if got:
                        passes += 1
                        if not self._pass(source, dest, vms, passes):
                            return
                wait_seconds = attempts.config.precopy_pass_interval_seconds if got else SLOT_RETRY_SECONDS
                self.stopping.wait(wait_seconds)
            if self._move_ended():
                self._remove(dest, vms)

    def _pass(self, source: Hypervisor, dest: Hypervisor, vms: list[VmInfo], number: int) -> bool:
        """One pass over each volume; a failure drops the whole pre-copy (the next pass starts afresh). False
        when this host cannot read the disks live (not a local file): no window pre-copy then."""
        sent_before = sum(p.bytes_written for p in self._precopied.values())
        try:
            for ref in (ref for vm in vms for ref in vm.volumes):
                if self._should_stop():
                    return True
                volume = source.find_volume(ref.pool, ref.volume)
                if volume is None:
                    raise EvacuatorError(f"source volume {ref.pool}/{ref.volume} is missing")
                earlier = self._precopied.pop(ref, None)
                limit_seconds = self._limit_for(volume)
                if earlier is None:
                    result = first_pass(source, dest, volume, limit_seconds=limit_seconds,
                                        clock=self._attempts.clock, stop=self._should_stop)
                    if result is None:
                        log.info("window_precopy_unavailable", **self._context, pool=ref.pool,
                                 volume=ref.volume, reason="the volume cannot be read live on this host")
                        self._remove(dest, vms)
                        return False
                else:
                    result = converge_volume(source, dest, ref, earlier, limit_seconds=limit_seconds,
                                             clock=self._attempts.clock, stop=self._should_stop)
                if result is None:
                    raise EvacuatorError(f"{ref.pool}/{ref.volume} cannot be pre-copied now")
                self._precopied[ref] = result
            sent = sum(p.bytes_written for p in self._precopied.values())
            log.info("window_precopy_pass", **self._context, number=number, sent_bytes=sent,
                     pass_bytes=sent - sent_before)
        except PassStopped:
            pass  # the stopped first pass removed its copy: that volume starts afresh next time
        except EvacuatorError as exc:
            log.warning("window_precopy_pass_failed", **self._context, error=str(exc)[:500])
            self._remove(dest, vms)
        return True

    def _should_stop(self) -> bool:
        return self.stopping.is_set() or self._attempts.transfer_wanted() or self._move_ended(cached=True)

    def _move_ended(self, *, cached: bool = False) -> bool:
        """Whether a move ended (cancelled, for one) while in its window; looks at the journal at most every
        JOURNAL_LOOK_SECONDS when `cached`. A group's pre-copy ends with any of its moves (all or nothing)."""
        now = self._attempts.clock()
        if cached and self._looked_at is not None and (
                (now - self._looked_at).total_seconds() < JOURNAL_LOOK_SECONDS):  # fmt: skip
            return self._gone
        self._looked_at = now
        records = [self._attempts.journal.get(vm_uuid) for vm_uuid in self._vm_uuids]
        self._gone = any(record is None or record.state in TERMINAL for record in records)
        return self._gone

    def _remove(self, dest: Hypervisor, vms: list[VmInfo]) -> None:
        """Removes what this pre-copy sent (never a volume a VM on the destination uses)."""
        self._precopied = {}
        try:
            in_use = {ref for other in dest.list_vms() for ref in other.volumes}
            for vm in vms:
                for ref in vm.volumes:
                    if ref not in in_use and dest.find_volume(ref.pool, ref.volume) is not None:
                        dest.delete_volume(ref.pool, ref.volume)
                        log.info("window_precopy_removed", vm_uuid=vm.uuid, destination=dest.name,
                                 pool=ref.pool, volume=ref.volume)
        except EvacuatorError as exc:
            log.warning("window_precopy_leftover", **self._context, destination=dest.name,
                        error=str(exc)[:300])
