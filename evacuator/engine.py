"""The move engine: runs journaled moves on a worker thread and resumes every unfinished one at start-up."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Protocol

import structlog

from evacuator.errors import MigrationError
from evacuator.hypervisor import Hypervisor, VmInfo, VmState
from evacuator.journal import Journal
from evacuator.migrator import ColdMigrator, StepEvent, StepPhase
from evacuator.movestate import (
    CANCELLABLE,
    PENDING,
    STEP_STATE,
    TERMINAL,
    MoveRecord,
    MoveState,
    Phase,
    ResumeAction,
    allowed,
    invariant_violations,
    resume_action,
)
from evacuator.planner import PlannedMove, choose_destination

log = structlog.get_logger(__name__)

Clock = Callable[[], datetime]
# Opens the source and the named destination for one move; the engine closes them when the move ends.
OpenHosts = Callable[[str, str], AbstractContextManager[tuple[Hypervisor, Hypervisor]]]
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


class MoveEngine:
    """Owns the journal's records from "due" to an ending; one worker thread moves VMs one at a time."""

    def __init__(
        self,
        *,
        config: EngineConfig,
        journal: Journal,
        hypervisor: Hypervisor,
        open_hosts: OpenHosts,
        clock: Clock,
        sleep: Callable[[float], None],
        crash_point: CrashPoint = no_crash,
    ) -> None:
        self._config = config
        self._journal = journal
        self._hypervisor = hypervisor
        self._open_hosts = open_hosts
        self._outcomes: Outcomes = _LoggedOutcomes()
        self._clock = clock
        self._sleep = sleep
        self._crash_point = crash_point
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._queued: set[str] = set()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._worker = threading.Thread(target=self._work, name="evacuator-mover", daemon=True)

    # --- life cycle ---------------------------------------------------------------------------------------

    def start(
        self, *, timer_pending: Callable[[str], bool], outcomes: Outcomes | None = None
    ) -> tuple[str, ...]:
        """Starts the worker and queues every unfinished move whose timer will not fire it; returns those.
        `outcomes` hears how each move ends (given here: the service that listens also owns the engine)."""
        if outcomes is not None:
            self._outcomes = outcomes
        resumed = []
        for record in self._journal.unfinished():
            action = resume_action(record, timer_pending=timer_pending(record.vm_uuid))
            log.info("move_resume_decided", vm_uuid=record.vm_uuid, state=str(record.state),
                     phase=str(record.phase), action=str(action))
            if action in (ResumeAction.MOVE, ResumeAction.ROLL_BACK):
                self._enqueue(record.vm_uuid)
                resumed.append(record.vm_uuid)
        self._worker.start()
        return tuple(resumed)

    def stop(self, timeout_seconds: float = 30) -> None:
        self._queue.put(None)
        if self._worker.is_alive():
            self._worker.join(timeout=timeout_seconds)

    def busy(self) -> bool:
        with self._lock:
            return bool(self._queued)

    def wait_idle(self, timeout_seconds: float) -> bool:
        """Blocks until no move is queued or running (a real wait on the worker, not the injected clock)."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._queued, timeout=timeout_seconds)

    def record(self, vm_uuid: str) -> MoveRecord | None:
        return self._journal.get(vm_uuid)

    # --- what the service tells it ------------------------------------------------------------------------

    def plan(self, moves: Iterable[PlannedMove], *, may_restart_on_source: bool) -> None:
        """Journals each move as planned, before its timer exists: the journal is the record of truth."""
        for move in moves:
            current = self._journal.get(move.vm_uuid)
            if current is not None and current.state not in TERMINAL:
                continue  # already on its way (an earlier spell): its record stands
            self._journal.put(MoveRecord(
                vm_uuid=move.vm_uuid, vm_name=move.vm_name, tenant=move.tenant, source=self._config.host,
                destination=None, state=MoveState.PLANNED, phase=Phase.ENTERED, step=None,
                start_on_destination=None, may_restart_on_source=may_restart_on_source,
                deadline=move.deadline, attempt=0 if current is None else current.attempt + 1, error=None,
                updated_at=self._clock(),
            ))  # fmt: skip

    def mark(self, vm_uuid: str, state: MoveState) -> None:
        """Moves a pending record on (notified, waiting); ignored once the move has gone further."""
        record = self._journal.get(vm_uuid)
        if record is not None and record.state in PENDING and allowed(record.state, state):
            self._journal.advance(record, state, Phase.ENTERED, self._clock())

    def submit(self, vm_uuid: str) -> bool:
        """A window closed: journal the move as due, then queue it. False if there is nothing to move."""
        record = self._journal.get(vm_uuid) or self._adopt(vm_uuid)
        if record is None or record.state in TERMINAL:
            log.info("move_skipped", vm_uuid=vm_uuid, reason="not_on_this_host")
            return False
        if record.state in PENDING:
            record = self._journal.advance(record, record.state, Phase.DUE, self._clock())
            self._crash_point("due", Phase.DUE)
        self._enqueue(vm_uuid)
        return True

    def cancel(self, vm_uuid: str, reason: str) -> MoveRecord | None:
        """Cancels a move that has not started quiescing; returns the cancelled record, else None."""
        record = self._journal.get(vm_uuid)
        if record is None or record.state not in CANCELLABLE:
            return None
        return self._journal.advance(record, MoveState.CANCELLED, Phase.ENTERED, self._clock(), error=reason)

    # --- the worker ---------------------------------------------------------------------------------------

    def _adopt(self, vm_uuid: str) -> MoveRecord | None:
        """A timer without a journal record (made before the journal existed): the VM's own facts stand in."""
        vm = self._hypervisor.find_vm(vm_uuid)
        if vm is None:
            return None
        return self._journal.put(MoveRecord(
            vm_uuid=vm.uuid, vm_name=vm.name, tenant=vm.facts.tenant, source=self._config.host,
            destination=None, state=MoveState.WAITING, phase=Phase.ENTERED, step=None,
            start_on_destination=None, may_restart_on_source=True, deadline=None, attempt=0, error=None,
            updated_at=self._clock(),
        ))  # fmt: skip

    def _enqueue(self, vm_uuid: str) -> None:
        with self._lock:
            if vm_uuid in self._queued:
                return
            self._queued.add(vm_uuid)
        self._queue.put(vm_uuid)

    def _work(self) -> None:
        while (vm_uuid := self._queue.get()) is not None:
            try:
                self._execute(vm_uuid)
            except Exception as exc:  # a journal or host failure ends this move, never the worker
                log.error("move_crashed", vm_uuid=vm_uuid, error=str(exc), exc_info=True)
            finally:
                with self._idle:
                    self._queued.discard(vm_uuid)
                    self._idle.notify_all()

    def _execute(self, vm_uuid: str) -> None:
        record = self._journal.get(vm_uuid)
        if record is None or record.state in TERMINAL:
            return
        destination = record.destination or choose_destination(self._config.peers, frozenset())
        if destination is None:
            self._fail(record, "no destination host is configured")
            return
        try:
            with self._open_hosts(vm_uuid, destination) as (source, dest):
                record = self._run(record, source, dest, destination)
        except Exception as exc:  # whatever stopped the move, the journal and the tenant must hear of it
            record = self._journal.get(vm_uuid) or record
            self._fail(record, str(exc))
            return
        self._outcomes.moved(record)

    def _run(self, record: MoveRecord, source: Hypervisor, dest: Hypervisor, destination: str) -> MoveRecord:
        if record.start_on_destination is None or record.destination is None:
            # The run state before quiescing decides whether the VM starts on the destination: journal it
            # while it can still be read (after quiescing it runs nowhere).
            start = record.start_on_destination
            if start is None:
                start = _active(source.find_vm(record.vm_uuid)) or _active(dest.find_vm(record.vm_uuid))
            record = self._journal.advance(record, record.state, record.phase, self._clock(),
                                           destination=destination, start_on_destination=start)
        holder = [record]
        migrator = ColdMigrator(
            source=source, destination=dest, clock=self._clock,
            shutdown_timeout_seconds=self._config.shutdown_timeout_seconds, sleep=self._sleep,
            on_step=lambda event: holder.append(self._on_step(holder[-1], event, source, dest)),
            poll_interval_seconds=self._config.poll_interval_seconds,
        )  # fmt: skip
        migrator.move(record.vm_uuid, start_on_destination=record.start_on_destination)
        done = self._journal.advance(holder[-1], MoveState.DONE, Phase.FINISHED, self._clock(), error=None)
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

    def _fail(self, record: MoveRecord, reason: str) -> None:
        log.error("move_failed", vm_uuid=record.vm_uuid, destination=record.destination, error=reason)
        failed = self._journal.put(replace(record, state=MoveState.FAILED, phase=Phase.FAILED, error=reason,
                                           updated_at=self._clock()))
        self._outcomes.failed(failed, reason)


class _LoggedOutcomes:
    """For callers without tenants to tell (the `move` command): the engine's own log lines say it all."""

    def moved(self, record: MoveRecord) -> None:
        log.info("move_outcome", vm_uuid=record.vm_uuid, state=str(record.state))

    def failed(self, record: MoveRecord, reason: str) -> None:
        log.warning("move_outcome", vm_uuid=record.vm_uuid, state=str(record.state), error=reason)


def _active(vm: VmInfo | None) -> bool:
    return vm is not None and vm.state is not VmState.SHUT_OFF
