"""What every move attempt needs, for single VMs and groups alike: hosts, retries, transfer slots, migrators,
and the journal records of each step, of a rollback and of the move's ending."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, cast

import structlog
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from evacuator.errors import EvacuatorError, HypervisorError, MigrationError
from evacuator.hypervisor.model import Hypervisor, VmInfo, is_active
from evacuator.hypervisor.origin import Origin
from evacuator.migrate.factory import Migrators
from evacuator.migrate.steps import StepEvent, StepPhase, TransferSlot, TryTransferSlot
from evacuator.moves.destinations import Destinations, Nowhere, StaticPeers
from evacuator.moves.journal import Journal
from evacuator.moves.rollback import Rollback, RollbackOutcome, roll_back
from evacuator.moves.state import STEP_STATE, MoveRecord, MoveState, Phase, allowed, invariant_violations
from evacuator.moves.transfer_slots import ClusterSlots, TransferSlots, held_transfer, held_transfer_now

log = structlog.get_logger(__name__)

# Opens one host by name (this host or a peer); the runner closes it when done with it.
OpenHost = Callable[[str], AbstractContextManager[Hypervisor]]
# Test-only: called with the step name after every journal write, so a test can kill the process there.
CrashPoint = Callable[[str, Phase], None]
_PHASES = {StepPhase.STARTED: Phase.STARTED, StepPhase.FAILED: Phase.FAILED}


def no_crash(step: str, phase: Phase) -> None:
    """Production's crash point: does nothing."""


class Outcomes(Protocol):
    """Who hears how each move ended (the service tells the tenant)."""

    def moved(self, record: MoveRecord) -> None: ...
    def failed(self, record: MoveRecord, reason: str) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineConfig:
    host: str
    peers: tuple[str, ...]
    move_attempts: int = 3
    retry_initial_seconds: float = 2.0
    retry_max_seconds: float = 30.0
    # Disk transfers (copy and verify, or a live migration) out of this host and into one peer at once.
    max_outgoing_moves: int = 2
    max_incoming_moves_per_peer: int = 2
    # Moves beyond those that may shut down, wait for a transfer slot, or start meanwhile.
    quiesce_ahead_moves: int = 2
    # A running VM's disks are copied while it shuts down when a transfer slot is free at once (precopy.py).
    precopy_during_shutdown: bool = True
    # Once a window opens, its move's destination is chosen and claimed and the VM's disks are pre-copied
    # there, one pass every `precopy_pass_interval_seconds` until the move is due (moves/window_copies.py).
    precopy_during_window: bool = True
    precopy_pass_interval_seconds: float = 10.0
    # True: the engine's queue gives a unit the first of `peers` under its incoming cap (the static list).
    # False: each runner asks its Destinations when the unit starts (the host view's choice, with a claim).
    queue_picks_destination: bool = True


class Attempts:
    """Shared by every worker of one engine (thread-safe: the journal and the slots are)."""

    def __init__(
        self, *, config: EngineConfig, journal: Journal, open_host: OpenHost, migrators: Migrators,
        slots: TransferSlots, cluster_slots: ClusterSlots, clock: Callable[[], datetime],
        sleep: Callable[[float], None], crash_point: CrashPoint = no_crash,
        destinations: Destinations | None = None,
    ) -> None:
        self.config = config
        self.destinations: Destinations = destinations or StaticPeers(config.peers)
        self.journal = journal
        self.open_host = open_host
        self.migrators = migrators
        self.clock = clock
        self._slots = slots
        self._cluster_slots = cluster_slots
        self._sleep = sleep
        self._crash_point = crash_point

    def retrying(self) -> Retrying:
        """Backoff for one move (or group) to one destination; every attempt starts from the journal."""
        return Retrying(
            stop=stop_after_attempt(self.config.move_attempts),
            wait=wait_exponential(multiplier=self.config.retry_initial_seconds,
                                  max=self.config.retry_max_seconds),
            retry=retry_if_exception_type(EvacuatorError), sleep=self._sleep, reraise=True,
        )  # fmt: skip

    def transfer_slot(self, destination: str, records: Sequence[MoveRecord]) -> TransferSlot:
        """How a migrator bound for `destination` holds a transfer slot (this engine's, and the cloud's) for
        these moves: at their highest priority, and urgently when one leaves a failed host (which may not
        get its VMs back, so the cloud-wide caps must not keep them there)."""
        urgent = any(not r.may_restart_on_source for r in records)
        return held_transfer(self._slots, self._cluster_slots, destination, max(r.priority for r in records),
                             urgent=urgent)

    def precopy_slot(self, destination: str) -> TryTransferSlot | None:
        """How a cold migrator tries for a slot to pre-copy while its VM shuts down; None when that is off."""
        if not self.config.precopy_during_shutdown:
            return None
        return held_transfer_now(self._slots, self._cluster_slots, destination)

    def window_slot(self, destination: str) -> TryTransferSlot:
        """How a window's pre-copy tries for a slot: only one free at once and wanted by no waiting move."""
        return held_transfer_now(self._slots, self._cluster_slots, destination)

    def transfer_wanted(self) -> bool:
        """Whether a move waits for a transfer slot (a window's pre-copy then gives its slot up)."""
        return self._slots.wanted()

    # --- the journal's side of an attempt ------------------------------------------------------------------

    def intent(
        self, record: MoveRecord, source: Hypervisor, dest: Hypervisor, destination: str
    ) -> MoveRecord:
        if record.start_on_destination is None or record.destination != destination:
            # The run state before quiescing decides whether the VM starts on the destination: journal it
            # while it can still be read (after quiescing it runs nowhere).
            start = record.start_on_destination
            if start is None:
                start = is_active(source.find_vm(record.vm_uuid)) or is_active(dest.find_vm(record.vm_uuid))
            record = self.journal.advance(record, record.state, record.phase, self.clock(),
                                          destination=destination, start_on_destination=start)
        return record

    def on_step(
        self, record: MoveRecord, event: StepEvent, source: Hypervisor, dest: Hypervisor
    ) -> MoveRecord:
        if event.phase is StepPhase.STARTED:
            problems = invariant_violations(record.vm_uuid, source.find_vm(record.vm_uuid),
                                            dest.find_vm(record.vm_uuid))
            if problems:
                log.error("move_invariant_broken", vm_uuid=record.vm_uuid, step=str(event.step),
                          problems=list(problems))
                raise MigrationError("; ".join(problems), vm_uuid=record.vm_uuid, step=event.step)
        wanted = STEP_STATE[event.step]
        # A resumed move replays the earlier steps (they find nothing to do): the state never goes back.
        state = wanted if allowed(record.state, wanted) else record.state
        phase = _PHASES.get(event.phase, Phase.FINISHED)
        record = self.journal.advance(record, state, phase, event.at, step=str(event.step), error=event.error)
        self._crash_point(str(event.step), phase)
        return record

    def record_origin(self, dest: Hypervisor, record: MoveRecord) -> None:
        """Writes on the destination where the VM came from (this host, now), for a later move back; a move
        back removes it instead. Before the move is journaled done, so a restart in between writes it again.
        A failure only means the VM will not be offered back: it never fails a move whose VM runs there."""
        origin = None if record.return_to else Origin(host=self.config.host, left_at=self.clock())
        try:
            dest.set_origin(record.vm_uuid, origin)
        except HypervisorError as exc:
            log.warning("vm_origin_unrecorded", vm_uuid=record.vm_uuid, destination=dest.name, error=str(exc))

    def done(self, record: MoveRecord, destination: str, *, bytes_copied: int | None = None) -> MoveRecord:
        """Journals the move done; `bytes_copied` (what the last attempt wrote there) goes to its history."""
        done = self.journal.advance(record, MoveState.DONE, Phase.FINISHED, self.clock(), error=None,
                                    bytes_copied=bytes_copied)
        self._crash_point("done", Phase.FINISHED)
        log.info("move_journaled_done", vm_uuid=done.vm_uuid, destination=destination)
        return done

    def fail_unplaced(self, record: MoveRecord, outcomes: Outcomes, nowhere: Nowhere) -> None:
        """Ends a move that has nowhere to go; the VM stays on its source as it is, and the tenant hears
        the stable reason first (`no_capacity: ...`)."""
        log.warning("move_unplaced", vm_uuid=record.vm_uuid, group=record.group, reason=nowhere.reason,
                    detail=nowhere.detail)
        failed = self.journal.advance(record, MoveState.FAILED, Phase.FAILED, self.clock(),
                                      error=nowhere.message)
        self.end((failed, None), outcomes)

    def roll_back(
        self, record: MoveRecord, reason: str, destination: str | None, *, last_try: bool
    ) -> tuple[MoveRecord, Rollback]:
        reached = record.state
        if record.state is not MoveState.ROLLING_BACK:
            record = self.journal.advance(record, MoveState.ROLLING_BACK, Phase.STARTED, self.clock(),
                                          error=reason, step=None, destination=destination)
            self._crash_point("rolling_back", Phase.STARTED)
        # Restart on the source only when no other host will be tried, the VM ran, and the policy allows.
        restart = last_try and bool(record.start_on_destination) and record.may_restart_on_source
        with self.open_host(self.config.host) as source, self._reach(record.destination) as dest:
            rollback = roll_back(record.vm_uuid, source=source, destination=dest, reached=reached,
                                 restart_on_source=restart)
        log.warning("move_rolled_back", vm_uuid=record.vm_uuid, outcome=str(rollback.outcome),
                    running_on_source=rollback.running_on_source, detail=rollback.detail)
        return record, rollback

    def end(self, ended: tuple[MoveRecord, Rollback | None], outcomes: Outcomes) -> None:
        """Journals how a failed move ended (back on its source, or failed) and tells `outcomes`."""
        record, rollback = ended
        reason = record.error or "move failed"
        if rollback is not None and rollback.outcome is not RollbackOutcome.FORWARD_ONLY and (
                rollback.running_on_source or not record.start_on_destination):
            state = MoveState.RESTORED_ON_SOURCE
        else:
            state = MoveState.FAILED
        if rollback is not None and rollback.detail:
            reason = f"{reason}; {rollback.detail}"
        if record.state is not state:
            record = self.journal.advance(record, state, Phase.FINISHED, self.clock(), error=reason)
        log.error("move_failed", vm_uuid=record.vm_uuid, destination=record.destination, state=str(state),
                  error=reason)
        outcomes.failed(record, reason)

    @contextmanager
    def _reach(self, name: str | None) -> Iterator[Hypervisor]:
        """The destination, or a stand-in that fails every call when it cannot be reached."""
        if name is None:
            yield cast(Hypervisor, _Nowhere())
            return
        try:
            opened = self.open_host(name)
            host = opened.__enter__()
        except Exception as exc:  # whatever keeps us from it, the destination counts as unreachable
            yield cast(Hypervisor, _Unreachable(name, str(exc)))
            return
        try:
            yield host
        finally:
            opened.__exit__(None, None, None)


class _Nowhere:
    """The destination of a move that never chose one: it holds nothing."""

    name = "(none)"

    def find_vm(self, uuid: str) -> None:
        return None

    def list_vms(self) -> tuple[VmInfo, ...]:
        return ()

    def find_volume(self, pool: str, volume: str) -> None:
        return None


class _Unreachable:
    """A host that cannot be reached: every call fails, so cleanup there is reported as left over."""

    def __init__(self, name: str, error: str) -> None:
        self.name = name
        self._error = error

    def __getattr__(self, operation: str) -> Callable[..., object]:
        def fail(*args: object, **kwargs: object) -> object:
            raise HypervisorError(f"host {self.name}: {operation}: unreachable: {self._error}")

        return fail
