"""A window's pre-copy: once a move's window opens, its destination is chosen, claimed and journaled, and the
running VM's disks are copied there, pass after pass, while its tenant preprocesses.

The rules (docs/moves.md, "Pre-copy during the window"):
- A pass runs only under a transfer slot that was free at once, and gives it up at the next chunk when a move
  waits for one: a move whose window has ended is never delayed by a pre-copy.
- The first pass sends the volume whole; each later one reads it again and sends only the blocks whose
  digest changed (migrate/converge.py). None of it counts until the move's last pass, once the VM is off,
  and the destination's digest of its whole volume is checked as for any copy.
- The runner takes the pre-copy over when the move starts (`take`): its held claim and what was sent.
- A cancelled move (or one ended otherwise) removes its pre-copied volumes and gives its claim back; a
  rolled-back one has them removed by the rollback, which cleans the journaled destination.
- After a crash nothing of a pass is trusted: the restarted pre-copy (or the move) copies afresh.
- While the cloud-wide pause holds (`evacuator pause`), no pass starts: a pass under way ends as a move under
  way does, and the claim is kept for when the pause is lifted.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
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
_SLOT_RETRY_SECONDS = 1.0
# How often a pass looks at the journal for a cancelled move (a SQLite read).
_JOURNAL_LOOK_SECONDS = 0.5
# How often a pre-copy held by the cloud-wide pause asks the broker again whether it still holds.
_PAUSE_LOOK_SECONDS = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Handover:
    """What a window's pre-copy hands its move: the destination it holds, and what each volume got there."""

    held: Held
    precopied: dict[VolumeRef, PrecopiedVolume]


class WindowCopies:
    """Every window's pre-copy of one engine, one thread each; thread-safe."""

    def __init__(self, attempts: Attempts, *, limit_for: Callable[[VolumeInfo], float],
                 paused: Callable[[], bool] = lambda: False) -> None:
        """`paused`: whether the cloud-wide pause holds (guard.Gate.paused)."""
        self._attempts = attempts
        self._limit_for = limit_for
        self._paused = paused
        self._lock = threading.Lock()
        self._copies: dict[str, _WindowCopy] = {}
        # Held by the engine while it journals a move due, and by a pre-copy while it journals its
        # destination: a pre-copy never writes over a move's `due`.
        self.journal_lock = threading.Lock()

    def begin(self, record: MoveRecord) -> None:
        """Starts the move's pre-copy unless it runs already, is off, or the move is not a single one in its
        window (a consistency group's disks travel once all its VMs are off)."""
        if (not self._attempts.config.precopy_during_window or record.group is not None
                or record.state not in PENDING or record.phase is Phase.DUE):  # fmt: skip
            return
        with self._lock:
            if record.vm_uuid in self._copies:
                return
            copy = self._copies[record.vm_uuid] = _WindowCopy(self, record.vm_uuid)
        copy.thread.start()

    def take(self, vm_uuid: str) -> Handover | None:
        """Stops the VM's pre-copy (its pass ends at the next chunk) and hands over what it holds, if any."""
        with self._lock:
            copy = self._copies.pop(vm_uuid, None)
        return None if copy is None else copy.hand_over()

    def stop(self) -> None:
        """Stops every pre-copy and gives its claim back; what it sent stays (a restart copies afresh)."""
        with self._lock:
            copies = list(self._copies.values())
            self._copies.clear()
        for copy in copies:
            copy.stopping.set()
        for copy in copies:
            copy.thread.join(timeout=30)

    def running(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(self._copies)

    def _ended(self, copy: _WindowCopy) -> None:
        with self._lock:
            if self._copies.get(copy.vm_uuid) is copy:
                del self._copies[copy.vm_uuid]


class _WindowCopy:
    def __init__(self, owner: WindowCopies, vm_uuid: str) -> None:
        self._owner = owner
        self._attempts = owner._attempts
        self.vm_uuid = vm_uuid
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._handing = False
        self._held: Held | None = None
        self._precopied: dict[VolumeRef, PrecopiedVolume] = {}
        self._looked_at: datetime | None = None
        self._gone = False
        self.thread = threading.Thread(target=self._run, name=f"evacuator-window-{vm_uuid[:8]}", daemon=True)

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
            log.warning("window_precopy_failed", vm_uuid=self.vm_uuid, error=str(exc)[:500])
            self._precopied = {}
        finally:
            with self._lock:
                if not self._handing and self._held is not None:
                    self._held.release()
                    self._held = None
            self._owner._ended(self)

    def _destination(self) -> Held | None:
        """Chooses and claims the destination (again, with the same claim, after a restart) and journals it,
        so a restart resumes toward it. None when there is none now: the move chooses when it is due."""
        attempts = self._attempts
        record = attempts.journal.get(self.vm_uuid)
        if record is None or record.state not in PENDING or record.phase is Phase.DUE:
            return None
        with attempts.open_host(attempts.config.host) as source:
            vm = source.find_vm(self.vm_uuid)
        if vm is None or (vm.facts.method or MoveMethod.COLD) is not MoveMethod.COLD:
            return None  # a live move's disks travel with its memory
        destinations = attempts.destinations
        choice = (destinations.resume([record], record.destination) if record.destination
                  else destinations.choose([record], (), only=record.return_to))  # fmt: skip
        if isinstance(choice, Nowhere):
            log.info("window_precopy_unplaced", vm_uuid=self.vm_uuid, reason=choice.reason)
            return None
        with self._lock:
            self._held = choice
        with self._owner.journal_lock:
            current = attempts.journal.get(self.vm_uuid)
            if current is None or current.state not in PENDING or current.phase is Phase.DUE:
                return None  # due meanwhile: the move chooses (or resumes) its destination itself
            attempts.journal.advance(current, current.state, Phase.PRECOPYING, attempts.clock(),
                                     destination=choice.host)
        return choice

    def _copy(self, held: Held) -> None:
        attempts = self._attempts
        with attempts.open_host(attempts.config.host) as source, attempts.open_host(held.host) as dest:
            vm = source.find_vm(self.vm_uuid)
            if vm is None:
                return
            log.info("window_precopy_started", vm_uuid=self.vm_uuid, destination=held.host)
            passes, held_by_pause = 0, False
            while not self.stopping.is_set():
                if self._move_ended():
                    self._remove(dest, vm)
                    return
                if self._owner._paused():
                    if not held_by_pause:
                        log.info("window_precopy_paused", vm_uuid=self.vm_uuid, destination=held.host)
                    held_by_pause = True
                    self.stopping.wait(_PAUSE_LOOK_SECONDS)
                    continue
                if held_by_pause:
                    log.info("window_precopy_resumed", vm_uuid=self.vm_uuid, destination=held.host)
                    held_by_pause = False
                with attempts.window_slot(held.host)(self.vm_uuid) as got:
                    got = got and not attempts.transfer_wanted()
                    if got:
                        passes += 1
                        if not self._pass(source, dest, vm, passes):
                            return
                wait_seconds = attempts.config.precopy_pass_interval_seconds if got else _SLOT_RETRY_SECONDS
                self.stopping.wait(wait_seconds)
            if self._move_ended():
                self._remove(dest, vm)

    def _pass(self, source: Hypervisor, dest: Hypervisor, vm: VmInfo, number: int) -> bool:
        """One pass over each volume; a failure drops the whole pre-copy (the next pass starts afresh). False
        when this host cannot read the VM's disks live (not a local file): no window pre-copy then."""
        sent_before = sum(p.bytes_written for p in self._precopied.values())
        try:
            for ref in vm.volumes:
                if self._should_stop():
                    return True
                volume = source.find_volume(ref.pool, ref.volume)
                if volume is None:
                    raise EvacuatorError(f"source volume {ref.pool}/{ref.volume} is missing")
                earlier = self._precopied.pop(ref, None)
                limit_seconds = self._owner._limit_for(volume)
                if earlier is None:
                    result = first_pass(source, dest, volume, limit_seconds=limit_seconds,
                                        clock=self._attempts.clock, stop=self._should_stop)
                    if result is None:
                        log.info("window_precopy_unavailable", vm_uuid=self.vm_uuid, pool=ref.pool,
                                 volume=ref.volume, reason="the volume cannot be read live on this host")
                        self._remove(dest, vm)
                        return False
                else:
                    result = converge_volume(source, dest, ref, earlier, limit_seconds=limit_seconds,
                                             clock=self._attempts.clock, stop=self._should_stop)
                if result is None:
                    raise EvacuatorError(f"{ref.pool}/{ref.volume} cannot be pre-copied now")
                self._precopied[ref] = result
            sent = sum(p.bytes_written for p in self._precopied.values())
            log.info("window_precopy_pass", vm_uuid=self.vm_uuid, number=number, sent_bytes=sent,
                     pass_bytes=sent - sent_before)
        except PassStopped:
            pass  # the stopped first pass removed its copy: that volume starts afresh next time
        except EvacuatorError as exc:
            log.warning("window_precopy_pass_failed", vm_uuid=self.vm_uuid, error=str(exc)[:500])
            self._remove(dest, vm)
        return True

    def _should_stop(self) -> bool:
        return self.stopping.is_set() or self._attempts.transfer_wanted() or self._move_ended(cached=True)

    def _move_ended(self, *, cached: bool = False) -> bool:
        """Whether the move ended (cancelled, for one) while in its window; looks at the journal at most
        every _JOURNAL_LOOK_SECONDS when `cached`."""
        now = self._attempts.clock()
        if cached and self._looked_at is not None and (
                (now - self._looked_at).total_seconds() < _JOURNAL_LOOK_SECONDS):  # fmt: skip
            return self._gone
        self._looked_at = now
        record = self._attempts.journal.get(self.vm_uuid)
        self._gone = record is None or record.state in TERMINAL
        return self._gone

    def _remove(self, dest: Hypervisor, vm: VmInfo) -> None:
        """Removes what this pre-copy sent (never a volume a VM on the destination uses)."""
        self._precopied = {}
        try:
            in_use = {ref for other in dest.list_vms() for ref in other.volumes}
            for ref in vm.volumes:
                if ref not in in_use and dest.find_volume(ref.pool, ref.volume) is not None:
                    dest.delete_volume(ref.pool, ref.volume)
                    log.info("window_precopy_removed", vm_uuid=self.vm_uuid, destination=dest.name,
                             pool=ref.pool, volume=ref.volume)
        except EvacuatorError as exc:
            log.warning("window_precopy_leftover", vm_uuid=self.vm_uuid, destination=dest.name,
                        error=str(exc)[:300])
