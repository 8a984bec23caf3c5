"""The move engine: runs journaled moves on worker threads and resumes every unfinished one at start-up."""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Protocol

import structlog

from evacuator.hypervisor.facts import VmFacts
from evacuator.hypervisor.model import Hypervisor, VmInfo
from evacuator.moves.attempts import CrashPoint, EngineConfig, Outcomes, no_crash
from evacuator.moves.guard import Gate, OpenGate
from evacuator.moves.journal import Journal
from evacuator.moves.queue import Unit, next_unit
from evacuator.moves.state import (
    PENDING,
    TERMINAL,
    MoveRecord,
    MoveState,
    Phase,
    ResumeAction,
    allowed,
    resume_action,
)
from evacuator.moves.window_copies import WindowCopies

log = structlog.get_logger(__name__)

Clock = Callable[[], datetime]


class SingleMoves(Protocol):
    """Takes one VM's journaled move to an ending (moves/runner.py)."""

    def execute(self, record: MoveRecord, outcomes: Outcomes) -> None: ...


class GroupMoves(Protocol):
    """Takes a consistency group's journaled moves to their endings, all or nothing (moves/groups.py)."""

    def execute_group(self, records: Sequence[MoveRecord], outcomes: Outcomes) -> None: ...


class Planned(Protocol):
    """A move the incident planned: which VM, whose, and by when (the planner's PlannedMove, or the incident
    ledger's record of it; incident/ports.py's Moves takes these too)."""

    @property
    def vm_uuid(self) -> str: ...
    @property
    def vm_name(self) -> str: ...
    @property
    def tenant(self) -> str | None: ...
    @property
    def deadline(self) -> datetime: ...
    @property
    def return_to(self) -> str | None:
        """A move back's one destination (the VM's origin); None: wherever placement says."""
        ...


class MoveEngine:
    """Owns the journal's records from "due" to an ending; one worker thread moves VMs one at a time."""

    def __init__(
        self,
        *,
        config: EngineConfig,
        journal: Journal,
        hypervisor: Hypervisor,
        runner: SingleMoves,
        groups: GroupMoves,
        clock: Clock,
        crash_point: CrashPoint = no_crash,
        gate: Gate | None = None,
        window: WindowCopies | None = None,
    ) -> None:
        self._config = config
        self._window = window  # pre-copies during the windows (None: the disks travel once each move is due)
        self._gate: Gate = gate or OpenGate()
        self._journal = journal
        self._hypervisor = hypervisor
        self._runner = runner
        self._groups = groups
        self._outcomes: Outcomes = _LoggedOutcomes()
        self._clock = clock
        self._crash_point = crash_point
        self._waiting: dict[str, Unit] = {}
        self._running: dict[str, str] = {}  # unit key -> destination ("": the runner's to choose)
        self._seq = itertools.count()
        self._stopping = False
        self._changed = threading.Condition()
        # One worker per transfer slot (oVirt's default is 2 per source), plus the moves that may shut down
        # or start while those transfer: the slots keep the disks and the link busy, not the VMs' boots.
        self._workers = [threading.Thread(target=self._work, name=f"evacuator-mover-{index}", daemon=True)
                         for index in range(config.max_outgoing_moves + config.quiesce_ahead_moves)]

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
            elif action is ResumeAction.WAIT_FOR_TIMER and record.state is MoveState.WAITING and self._window:
                self._window.begin(record)  # toward its journaled destination, afresh
        for worker in self._workers:
            worker.start()
        return tuple(resumed)

    def stop(self, timeout_seconds: float = 30) -> None:
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        if self._window is not None:
            self._window.stop()
        for worker in self._workers:
            if worker.is_alive():
                worker.join(timeout=timeout_seconds)

    def busy(self) -> bool:
        with self._changed:
            return bool(self._waiting or self._running)

    def wait_idle(self, timeout_seconds: float) -> bool:
        """Blocks until no move is queued or running (a real wait on the workers, not the injected clock)."""
        with self._changed:
            return self._changed.wait_for(lambda: not (self._waiting or self._running),
                                          timeout=timeout_seconds)

    def record(self, vm_uuid: str) -> MoveRecord | None:
        return self._journal.get(vm_uuid)

    # --- what the service tells it ------------------------------------------------------------------------

    def plan(self, moves: Iterable[Planned], *, may_restart_on_source: bool) -> None:
        """Journals each move as planned, before its timer exists: the journal is the record of truth."""
        for move in moves:
            current = self._journal.get(move.vm_uuid)
            if current is not None and current.state not in TERMINAL:
                continue  # already on its way (an earlier spell): its record stands
            facts = _facts(self._hypervisor.find_vm(move.vm_uuid))
            self._journal.put(MoveRecord(
                vm_uuid=move.vm_uuid, vm_name=move.vm_name, tenant=move.tenant, source=self._config.host,
                destination=None, state=MoveState.PLANNED, phase=Phase.ENTERED, step=None,
                start_on_destination=None, may_restart_on_source=may_restart_on_source,
                deadline=move.deadline, attempt=0 if current is None else current.attempt + 1, error=None,
                updated_at=self._clock(), group=facts.group, boot_order=facts.boot_order or 0,
                priority=facts.priority or 0, return_to=move.return_to,
            ))  # fmt: skip

    def mark(self, vm_uuid: str, state: MoveState) -> None:
        """Moves a pending record on (notified, waiting); ignored once the move has gone further."""
        # Under the pre-copies' journal lock, read afresh: a group's pre-copy, begun by another member's
        # window, may be journaling this record's destination and `precopying` right now.
        with self._window.journal_lock if self._window is not None else contextlib.nullcontext():
            record = self._journal.get(vm_uuid)
            if record is None or record.state not in PENDING or not allowed(record.state, state):
                return
            due = record.phase is Phase.DUE  # its timer fired first: the move is queued, no window is left
            phase = Phase.PRECOPYING if record.phase is Phase.PRECOPYING else Phase.ENTERED
            record = self._journal.advance(record, state, phase, self._clock())
        if state is MoveState.WAITING and self._window is not None and not due:
            self._window.begin(record)

    def submit(self, vm_uuid: str) -> bool:
        """A window closed: journal the move as due, then queue it. False if there is nothing to move."""
        record = self._journal.get(vm_uuid) or self._adopt(vm_uuid)
        if record is None or record.state in TERMINAL:
            # A cancelled move's timer may still fire (the daemon's timers live in another process's memory).
            reason = "not_on_this_host" if record is None else str(record.state)
            log.info("move_skipped", vm_uuid=vm_uuid, reason=reason)
            return False
        # A group is due as a whole when any of its VMs is: it moves all or nothing.
        with self._window.journal_lock if self._window is not None else contextlib.nullcontext():
            # Read again: a window's pre-copy may have journaled its destination since.
            for member in self._members(self._journal.get(vm_uuid) or record):
                if member.state in PENDING:
                    self._journal.advance(member, member.state, Phase.DUE, self._clock())
        self._crash_point("due", Phase.DUE)
        self._enqueue(vm_uuid)
        return True

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
            updated_at=self._clock(), group=vm.facts.group, boot_order=vm.facts.boot_order or 0,
            priority=vm.facts.priority or 0,
        ))  # fmt: skip

    def _members(self, record: MoveRecord) -> list[MoveRecord]:
        if record.group is None:
            return [record]
        return [r for r in self._journal.unfinished() if r.group == record.group]

    def _enqueue(self, vm_uuid: str) -> None:
        record = self._journal.get(vm_uuid)
        if record is None:
            return
        members = self._members(record)
        key = vm_uuid if record.group is None else f"group:{record.group}"
        with self._changed:
            if key in self._waiting or key in self._running:
                return
            self._waiting[key] = Unit(
                key=key, members=tuple(m.vm_uuid for m in members),
                priority=max(m.priority for m in members),
                seq=next(self._seq),
                # A move back goes to its origin only: counted there against the incoming cap.
                destination=next((m.destination or m.return_to for m in members
                                  if m.destination or m.return_to), None),
            )  # fmt: skip
            self._changed.notify_all()

    def _next(self) -> tuple[Unit, str | None] | None:
        """Blocks until a unit may run (caps permitting) or the engine stops; marks it running."""
        with self._changed:
            while True:
                if self._stopping:
                    return None
                incoming = Counter(self._running.values())
                peers = self._config.peers if self._config.queue_picks_destination else None
                chosen = next_unit(list(self._waiting.values()), incoming, peers,
                                   max_incoming_per_peer=self._config.max_incoming_moves_per_peer
                                   + self._config.quiesce_ahead_moves)
                if chosen is not None:
                    unit, destination = chosen
                    del self._waiting[unit.key]
                    self._running[unit.key] = destination or ""
                    return chosen
                self._changed.wait()

    def _work(self) -> None:
        while (chosen := self._next()) is not None:
            unit, destination = chosen
            try:
                self._execute(unit, destination)
            except Exception as exc:  # a journal or host failure ends this move, never the worker
                log.error("move_crashed", unit=unit.key, error=str(exc), exc_info=True)
            finally:
                with self._changed:
                    del self._running[unit.key]
                    self._changed.notify_all()

    def _execute(self, unit: Unit, destination: str | None) -> None:
        found = map(self._journal.get, unit.members)
        records = [r for r in found if r is not None and r.state not in TERMINAL]
        # The destination is journaled before anything moves, so a restart resumes toward the same host (a
        # runner that chooses its own journals it in its first step's intent).
        records = [r if r.destination or destination is None or r.return_to else
                   self._journal.advance(r, r.state, r.phase, self._clock(), destination=destination)
                   for r in records]  # fmt: skip
        if not records:
            return
        # Only a move that has not begun waits for the blast-radius guards; one under way goes on.
        if all(r.step is None for r in records) and not self._gate.admit(lambda: self._stopping):
            return  # stopping while held: the journal keeps it due, and a restart queues it again
        if unit.key.startswith("group:"):
            self._groups.execute_group(records, self._outcomes)
        else:
            self._runner.execute(records[0], self._outcomes)


def _facts(vm: VmInfo | None) -> VmFacts:
    return VmFacts() if vm is None else vm.facts


class _LoggedOutcomes:
    """For callers without tenants to tell (the `move` command): the engine's own log lines say it all."""

    def moved(self, record: MoveRecord) -> None:
        log.info("move_outcome", vm_uuid=record.vm_uuid, state=str(record.state))

    def failed(self, record: MoveRecord, reason: str) -> None:
        log.warning("move_outcome", vm_uuid=record.vm_uuid, state=str(record.state), error=reason)
