"""The move engine: runs journaled moves on a worker thread and resumes every unfinished one at start-up."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable
from datetime import datetime

import structlog

from evacuator.hypervisor import Hypervisor
from evacuator.journal import Journal
from evacuator.moverun import (
    CrashPoint,
    EngineConfig,
    MoveRunner,
    OpenHost,
    Outcomes,
    no_crash,
)
from evacuator.movestate import (
    CANCELLABLE,
    PENDING,
    TERMINAL,
    MoveRecord,
    MoveState,
    Phase,
    ResumeAction,
    allowed,
    resume_action,
)
from evacuator.planner import PlannedMove

__all__ = ["CrashPoint", "EngineConfig", "MoveEngine", "OpenHost", "Outcomes", "no_crash"]

log = structlog.get_logger(__name__)

Clock = Callable[[], datetime]


class MoveEngine:
    """Owns the journal's records from "due" to an ending; one worker thread moves VMs one at a time."""

    def __init__(
        self,
        *,
        config: EngineConfig,
        journal: Journal,
        hypervisor: Hypervisor,
        open_host: OpenHost,
        clock: Clock,
        sleep: Callable[[float], None],
        crash_point: CrashPoint = no_crash,
    ) -> None:
        self._config = config
        self._journal = journal
        self._hypervisor = hypervisor
        self._runner = MoveRunner(config=config, journal=journal, open_host=open_host, clock=clock,
                                  sleep=sleep, crash_point=crash_point)
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
        self._runner.execute(record, self._outcomes)


class _LoggedOutcomes:
    """For callers without tenants to tell (the `move` command): the engine's own log lines say it all."""

    def moved(self, record: MoveRecord) -> None:
        log.info("move_outcome", vm_uuid=record.vm_uuid, state=str(record.state))

    def failed(self, record: MoveRecord, reason: str) -> None:
        log.warning("move_outcome", vm_uuid=record.vm_uuid, state=str(record.state), error=reason)
