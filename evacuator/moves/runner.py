"""Runs one journaled move to an ending: retries with backoff, then rollback and the next candidate host."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, cast

import structlog
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from evacuator.errors import EvacuatorError, HypervisorError, MigrationError
from evacuator.hypervisor.facts import MoveMethod
from evacuator.hypervisor.model import Hypervisor, VmInfo, is_active
from evacuator.migrate.cold import ColdMigrator
from evacuator.migrate.live import LiveMigrator
from evacuator.migrate.steps import StepEvent, StepPhase, TransferSlot
from evacuator.moves.journal import Journal
from evacuator.moves.rollback import Rollback, RollbackOutcome, roll_back
from evacuator.moves.state import STEP_STATE, MoveRecord, MoveState, Phase, allowed, invariant_violations
from evacuator.moves.transfer_slots import (
    ClusterSlots,
    NoClusterCap,
    TransferSlots,
    held_transfer,
    held_transfer_now,
)

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
    shutdown_timeout_seconds: float
    poll_interval_seconds: float = 0.5
    move_attempts: int = 3
    retry_initial_seconds: float = 2.0
    retry_max_seconds: float = 30.0
    copy_timeout_base_seconds: float = 60.0
    copy_min_bytes_per_second: float = 10 * 1024 * 1024
    # Disk transfers (copy and verify, or a live migration) out of this host and into one peer at once.
    max_outgoing_moves: int = 2
    max_incoming_moves_per_peer: int = 2
    # Moves beyond those that may shut down, wait for a transfer slot, or start meanwhile.
    quiesce_ahead_moves: int = 2
    # A running VM's disks are copied while it shuts down when a transfer slot is free at once (precopy.py).
    precopy_during_shutdown: bool = True


class MoveRunner:
    """Takes one VM's journaled move from wherever it stands to done, restored_on_source or failed."""

    def __init__(
        self, *, config: EngineConfig, journal: Journal, open_host: OpenHost, clock: Callable[[], datetime],
        sleep: Callable[[float], None], crash_point: CrashPoint, slots: TransferSlots,
        cluster_slots: ClusterSlots | None = None,
    ) -> None:
        self._slots = slots  # shared by every worker of the engine
        self._cluster_slots = cluster_slots or NoClusterCap()
        self._config = config
        self._journal = journal
        self._open_host = open_host
        self._clock = clock
        self._sleep = sleep
        self._crash_point = crash_point

    def execute(self, record: MoveRecord, outcomes: Outcomes) -> None:
        if record.state is MoveState.ROLLING_BACK:
            ended = self._roll_back(record, record.error or "interrupted", record.destination, last_try=True)
            self._end(ended, outcomes)
            return
        tried: list[str] = []
        while True:
            destination = record.destination or self._next_peer(tried)
            if destination is None:
                self._end((self._journal.advance(record, MoveState.FAILED, Phase.FAILED, self._clock(),
                                                 error="no destination host is configured"), None), outcomes)
                return
            tried.append(destination)
            try:
                record = self._attempts(record, destination)
            except Exception as exc:  # whatever stopped the move, the journal and the tenant must hear of it
                record = self._journal.get(record.vm_uuid) or record
                reason = str(exc)
            else:
                outcomes.moved(record)
                return
            last_try = self._next_peer(tried) is None
            record, rollback = self._roll_back(record, reason, destination, last_try=last_try)
            if last_try or rollback.outcome is not RollbackOutcome.ON_SOURCE:
                self._end((record, rollback), outcomes)
                return
            log.info("move_next_candidate", vm_uuid=record.vm_uuid, failed_on=destination)
            record = self._journal.advance(record, MoveState.WAITING, Phase.DUE, self._clock(),
                                           destination=None)

    def _next_peer(self, tried: list[str]) -> str | None:
        return next((peer for peer in self._config.peers if peer not in tried), None)

    def _retrying(self) -> Retrying:
        """Backoff for one move (or group) to one destination; every attempt starts from the journal."""
        return Retrying(
            stop=stop_after_attempt(self._config.move_attempts),
            wait=wait_exponential(multiplier=self._config.retry_initial_seconds,
                                  max=self._config.retry_max_seconds),
            retry=retry_if_exception_type(EvacuatorError), sleep=self._sleep, reraise=True,
        )  # fmt: skip

    def _attempts(self, record: MoveRecord, destination: str) -> MoveRecord:
        """Runs the (idempotent) move, again after a failure with backoff, on fresh connections."""
        for attempt in self._retrying():
            with attempt:
                current = self._journal.get(record.vm_uuid) or record
                with self._open_host(self._config.host) as source, self._open_host(destination) as dest:
                    return self._run(current, source, dest, destination)
        raise AssertionError("tenacity either returns or reraises")  # pragma: no cover

    def _run(self, record: MoveRecord, source: Hypervisor, dest: Hypervisor, destination: str) -> MoveRecord:
        record = self._intent(record, source, dest, destination)
        holder = [record]

        def on_step(event: StepEvent) -> None:
            holder.append(self._on_step(holder[-1], event, source, dest))

        vm = source.find_vm(record.vm_uuid) or dest.find_vm(record.vm_uuid)
        method = (None if vm is None else vm.facts.method) or MoveMethod.COLD
        if method is not MoveMethod.COLD and record.start_on_destination:
            try:
                live = LiveMigrator(source=source, destination=dest, clock=self._clock, sleep=self._sleep,
                                    shutdown_timeout_seconds=self._config.shutdown_timeout_seconds,
                                    on_step=on_step)
                with self.transfer_slot(destination, record.priority)(record.vm_uuid):
                    live.move(record.vm_uuid, start_on_destination=True)
                return self._done(holder[-1], destination)
            except MigrationError as exc:
                if method is MoveMethod.LIVE:
                    raise
                # live_then_cold: a failed live migration leaves the guest running on the source.
                log.warning("live_move_failed_trying_cold", vm_uuid=record.vm_uuid, error=str(exc))
        self._migrator(source, dest, on_step, record.priority).move(record.vm_uuid,
                                                   start_on_destination=record.start_on_destination)
        return self._done(holder[-1], destination)

    def _intent(
        self, record: MoveRecord, source: Hypervisor, dest: Hypervisor, destination: str
    ) -> MoveRecord:
        if record.start_on_destination is None or record.destination != destination:
            # The run state before quiescing decides whether the VM starts on the destination: journal it
            # while it can still be read (after quiescing it runs nowhere).
            start = record.start_on_destination
            if start is None:
                start = is_active(source.find_vm(record.vm_uuid)) or is_active(dest.find_vm(record.vm_uuid))
            record = self._journal.advance(record, record.state, record.phase, self._clock(),
                                           destination=destination, start_on_destination=start)
        return record

    def _migrator(
        self, source: Hypervisor, dest: Hypervisor, on_step: Callable[[StepEvent], None], priority: int
    ) -> ColdMigrator:
        config = self._config
        return ColdMigrator(
            source=source, destination=dest, clock=self._clock,
            shutdown_timeout_seconds=config.shutdown_timeout_seconds, sleep=self._sleep, on_step=on_step,
            poll_interval_seconds=config.poll_interval_seconds,
            copy_timeout_base_seconds=config.copy_timeout_base_seconds,
            copy_min_bytes_per_second=config.copy_min_bytes_per_second,
            transfer_slot=self.transfer_slot(dest.name, priority),
            precopy_slot=held_transfer_now(self._slots, self._cluster_slots, dest.name)
            if config.precopy_during_shutdown else None,
        )  # fmt: skip

    def transfer_slot(self, destination: str, priority: int) -> TransferSlot:
        """How a migrator bound for `destination` holds a transfer slot (this engine's, and the cloud's)."""
        return held_transfer(self._slots, self._cluster_slots, destination, priority)

    def _done(self, record: MoveRecord, destination: str) -> MoveRecord:
        done = self._journal.advance(record, MoveState.DONE, Phase.FINISHED, self._clock(), error=None)
        self._crash_point("done", Phase.FINISHED)
        log.info("move_journaled_done", vm_uuid=done.vm_uuid, destination=destination)
        return done

    def _on_step(
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
        record = self._journal.advance(record, state, phase, event.at, step=str(event.step),
                                       error=event.error)
        self._crash_point(str(event.step), phase)
        return record

    def _roll_back(
        self, record: MoveRecord, reason: str, destination: str | None, *, last_try: bool
    ) -> tuple[MoveRecord, Rollback]:
        reached = record.state
        if record.state is not MoveState.ROLLING_BACK:
            record = self._journal.advance(record, MoveState.ROLLING_BACK, Phase.STARTED, self._clock(),
                                           error=reason, step=None, destination=destination)
            self._crash_point("rolling_back", Phase.STARTED)
        # Restart on the source only when no other host will be tried, the VM ran, and the policy allows.
        restart = last_try and bool(record.start_on_destination) and record.may_restart_on_source
        with self._open_host(self._config.host) as source, self._reach(record.destination) as dest:
            rollback = roll_back(record.vm_uuid, source=source, destination=dest, reached=reached,
                                 restart_on_source=restart)
        log.warning("move_rolled_back", vm_uuid=record.vm_uuid, outcome=str(rollback.outcome),
                    running_on_source=rollback.running_on_source, detail=rollback.detail)
        return record, rollback

    @contextmanager
    def _reach(self, name: str | None) -> Iterator[Hypervisor]:
        """The destination, or a stand-in that fails every call when it cannot be reached."""
        if name is None:
            yield cast(Hypervisor, _Nowhere())
            return
        try:
            opened = self._open_host(name)
            host = opened.__enter__()
        except Exception as exc:  # whatever keeps us from it, the destination counts as unreachable
            yield cast(Hypervisor, _Unreachable(name, str(exc)))
            return
        try:
            yield host
        finally:
            opened.__exit__(None, None, None)

    def _end(self, ended: tuple[MoveRecord, Rollback | None], outcomes: Outcomes) -> None:
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
            record = self._journal.advance(record, state, Phase.FINISHED, self._clock(), error=reason)
        log.error("move_failed", vm_uuid=record.vm_uuid, destination=record.destination, state=str(state),
                  error=reason)
        outcomes.failed(record, reason)


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
