"""The move engine and its journal over fake hosts: every step journaled, resumed after a crash anywhere."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from evacuator.engine import EngineConfig, MoveEngine
from evacuator.errors import HypervisorError, JournalError
from evacuator.fake_hypervisor import FakeHypervisor
from evacuator.hypervisor import Hypervisor, VmState
from evacuator.journal import Journal
from evacuator.lab.vms import domain_xml
from evacuator.migrator import MoveStep
from evacuator.movestate import MoveRecord, MoveState, Phase
from evacuator.planner import PlannedMove
from evacuator.vmmeta import VmFacts

T0 = datetime(2026, 11, 25, 4, 0, tzinfo=UTC)
POOL = "evacuator"
DATA = b"evacuator" * 1000


class Crash(BaseException):
    """Stands for SIGKILL: nothing after it runs (the worker thread dies with it)."""


class Told:
    """The Outcomes seam, recorded."""

    def __init__(self) -> None:
        self.moves: list[MoveRecord] = []
        self.failures: list[tuple[MoveRecord, str]] = []

    def moved(self, record: MoveRecord) -> None:
        self.moves.append(record)

    def failed(self, record: MoveRecord, reason: str) -> None:
        self.failures.append((record, reason))


class Hosts:
    def __init__(self) -> None:
        self.source = FakeHypervisor(name="host-a")
        self.destination = FakeHypervisor(name="host-b")
        self.third = FakeHypervisor(name="host-c")
        self.down: set[str] = set()

    @contextmanager
    def open(self, name: str) -> Iterator[Hypervisor]:
        if name in self.down:
            raise HypervisorError(f"host {name}: cannot connect")
        yield {"host-a": self.source, "host-b": self.destination, "host-c": self.third}[name]

    def add_vm(self, name: str) -> str:
        self.source.add_volume(POOL, f"{name}.raw", capacity_bytes=64 * 1024, data=DATA)
        xml = domain_xml(name=name, pool=POOL, volume=f"{name}.raw", mac="52:54:00:00:00:01",
                         facts=VmFacts(tenant="acme"), uuid=str(uuid.uuid4()))
        return self.source.add_vm(xml, state=VmState.RUNNING).uuid


def make_engine(
    hosts: Hosts, journal: Journal, crash_at: str | None = None, peers: tuple[str, ...] = ("host-b",)
) -> MoveEngine:
    ticks = iter(range(10**6))

    def crash_point(step: str, phase: Phase) -> None:
        if f"{step}:{phase}" == crash_at:
            raise Crash(crash_at)

    return MoveEngine(
        config=EngineConfig(host="host-a", peers=peers, shutdown_timeout_seconds=1, retry_initial_seconds=0),
        journal=journal, hypervisor=hosts.source, open_host=hosts.open,
        clock=lambda: T0 + timedelta(seconds=next(ticks)), sleep=lambda s: None, crash_point=crash_point,
    )  # fmt: skip


def planned(vm_uuid: str, name: str) -> PlannedMove:
    return PlannedMove(vm_uuid=vm_uuid, vm_name=name, tenant="acme", window_seconds=0, deadline=T0)


def test_journal_keeps_records_and_history_across_reopening(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    with Journal(path) as journal:
        first = MoveRecord(
            vm_uuid="u1", vm_name="web", tenant=None, source="host-a", destination=None,
            state=MoveState.PLANNED, phase=Phase.ENTERED, step=None, start_on_destination=None,
            may_restart_on_source=True, deadline=T0, attempt=0, error=None, updated_at=T0,
        )  # fmt: skip
        journal.put(first)
        journal.advance(first, MoveState.WAITING, Phase.ENTERED, T0, start_on_destination=True)
        with pytest.raises(JournalError, match="waiting -> done"):
            journal.advance(first, MoveState.DONE, Phase.FINISHED, T0)
    with Journal(path) as journal:
        again = journal.get("u1")
        assert again == replace(first, state=MoveState.WAITING, start_on_destination=True)
        assert journal.history("u1") == ((MoveState.PLANNED, Phase.ENTERED, None),
                                         (MoveState.WAITING, Phase.ENTERED, None))
        assert journal.unfinished() == (again,)


def test_a_move_is_journaled_before_and_after_every_step(tmp_path: Path) -> None:
    hosts, told = Hosts(), Told()
    with Journal(tmp_path / "j.sqlite") as journal:
        engine = make_engine(hosts, journal)
        web = hosts.add_vm("web")
        engine.plan([planned(web, "web")], may_restart_on_source=True)
        engine.mark(web, MoveState.WAITING)
        engine.start(timer_pending=lambda _: True, outcomes=told)
        assert engine.submit(web)
        assert engine.wait_idle(5)
        engine.stop()
        record = journal.get(web)
        history = journal.history(web)
    assert record is not None and record.state is MoveState.DONE and record.start_on_destination
    assert [r.vm_uuid for r in told.moves] == [web] and told.failures == []
    steps = [(state, phase, step) for state, phase, step in history if step is not None]
    assert steps == [
        (state, phase, str(step))
        for step, state in [(MoveStep.QUIESCE, MoveState.QUIESCING), (MoveStep.COPY_DISKS, MoveState.COPYING),
                            (MoveStep.VERIFY_DISKS, MoveState.COPYING), (MoveStep.DEFINE, MoveState.DEFINING),
                            (MoveStep.START, MoveState.STARTING), (MoveStep.VERIFY, MoveState.VERIFYING),
                            (MoveStep.CLEAN_UP, MoveState.CLEANING)]
        for phase in (Phase.STARTED, Phase.FINISHED)
    ] + [(MoveState.DONE, Phase.FINISHED, "clean_up")]
    assert history[0][:2] == (MoveState.PLANNED, Phase.ENTERED)
    assert hosts.destination.peek_vm(web) is not None and hosts.source.peek_vm(web) is None


CRASH_POINTS = ["due:due"] + [f"{step}:{phase}" for step in MoveStep for phase in ("started", "finished")] + [
    "done:finished"]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.parametrize("crash_at", CRASH_POINTS)
def test_a_crash_at_any_journaled_point_is_resumed_on_restart(tmp_path: Path, crash_at: str) -> None:
    hosts, told = Hosts(), Told()
    web = hosts.add_vm("web")
    with Journal(tmp_path / "j.sqlite") as journal:
        crashing = make_engine(hosts, journal, crash_at=crash_at)
        crashing.plan([planned(web, "web")], may_restart_on_source=True)
        crashing.start(timer_pending=lambda _: True, outcomes=told)
        with contextlib.suppress(Crash):  # "due" is journaled on the caller's thread: it crashes there
            crashing.submit(web)
        crashing.stop(5)
        assert told.moves == []
        assert hosts.source.peek_vm(web) is not None or hosts.destination.peek_vm(web) is not None
    with Journal(tmp_path / "j.sqlite") as journal:
        restarted = make_engine(hosts, journal)
        # The timer is gone from the store (it fired): the journal alone brings the move back.
        assert restarted.start(timer_pending=lambda _: False, outcomes=told) == (
            () if crash_at == "done:finished" else (web,))
        assert restarted.wait_idle(5)
        restarted.stop()
        record = journal.get(web)
    assert record is not None and record.state is MoveState.DONE
    moved = hosts.destination.peek_vm(web)
    assert moved is not None and moved.state is VmState.RUNNING and hosts.source.peek_vm(web) is None
    assert hosts.destination.volume_bytes(POOL, "web.raw")[: len(DATA)] == DATA
    assert hosts.source.volume_names() == () and hosts.destination.volume_names() == ((POOL, "web.raw"),)


def test_cancel_only_before_quiescing(tmp_path: Path) -> None:
    hosts = Hosts()
    web = hosts.add_vm("web")
    with Journal(tmp_path / "j.sqlite") as journal:
        engine = make_engine(hosts, journal)
        engine.plan([planned(web, "web")], may_restart_on_source=True)
        cancelled = engine.cancel(web, "tenant asked")
        assert cancelled is not None and cancelled.state is MoveState.CANCELLED
        assert engine.cancel(web, "again") is None
        assert not engine.submit(web)


def run_one(
    tmp_path: Path, hosts: Hosts, vm_uuid: str, *, peers: tuple[str, ...] = ("host-b",),
    may_restart_on_source: bool = True,
) -> tuple[MoveRecord, Told, tuple[tuple[MoveState, Phase, str | None], ...]]:
    told = Told()
    with Journal(tmp_path / "j.sqlite") as journal:
        engine = make_engine(hosts, journal, peers=peers)
        engine.plan([planned(vm_uuid, "web")], may_restart_on_source=may_restart_on_source)
        engine.start(timer_pending=lambda _: False, outcomes=told)
        assert engine.wait_idle(5)
        engine.stop()
        record, history = journal.get(vm_uuid), journal.history(vm_uuid)
    assert record is not None
    return record, told, history


def test_pool_full_on_the_only_peer_restores_the_vm_running_on_its_source(tmp_path: Path) -> None:
    hosts = Hosts()
    web = hosts.add_vm("web")
    hosts.destination.inject_error("write_volume", HypervisorError("host-b: no space left"), times=3)
    record, told, history = run_one(tmp_path, hosts, web)
    assert record.state is MoveState.RESTORED_ON_SOURCE and "no space left" in (record.error or "")
    assert MoveState.ROLLING_BACK in [state for state, _, _ in history]
    back = hosts.source.peek_vm(web)
    assert back is not None and back.state is VmState.RUNNING
    assert hosts.destination.list_vms() == () and hosts.destination.volume_names() == ()
    assert hosts.destination.calls.count(f"write_volume {POOL} web.raw") == 3, "three attempts, then rollback"
    assert [(r.vm_uuid, r.state) for r, _ in told.failures] == [(web, MoveState.RESTORED_ON_SOURCE)]


def test_a_transient_fault_is_retried_and_the_move_completes(tmp_path: Path) -> None:
    hosts = Hosts()
    web = hosts.add_vm("web")
    hosts.destination.inject_error("write_volume", HypervisorError("host-b: connection reset"), times=2)
    record, told, _ = run_one(tmp_path, hosts, web)
    assert record.state is MoveState.DONE and [r.vm_uuid for r in told.moves] == [web]


def test_start_refused_moves_on_to_the_next_candidate(tmp_path: Path) -> None:
    hosts = Hosts()
    web = hosts.add_vm("web")
    hosts.destination.inject_error("start_vm", HypervisorError("host-b: cannot start"), times=3)
    record, told, _ = run_one(tmp_path, hosts, web, peers=("host-b", "host-c"))
    assert record.state is MoveState.DONE and record.destination == "host-c"
    moved = hosts.third.peek_vm(web)
    assert moved is not None and moved.state is VmState.RUNNING
    assert hosts.source.peek_vm(web) is None and hosts.source.volume_names() == ()
    assert hosts.destination.list_vms() == () and hosts.destination.volume_names() == ()
    assert [r.destination for r in told.moves] == ["host-c"]


def test_a_failed_host_does_not_get_its_vm_back(tmp_path: Path) -> None:
    hosts = Hosts()
    web = hosts.add_vm("web")
    hosts.destination.inject_error("create_volume", HypervisorError("host-b: pool full"), times=3)
    record, told, _ = run_one(tmp_path, hosts, web, may_restart_on_source=False)
    assert record.state is MoveState.FAILED
    off = hosts.source.peek_vm(web)
    assert off is not None and off.state is VmState.SHUT_OFF
    assert told.failures and told.failures[0][0].state is MoveState.FAILED


def test_unreachable_destination_restores_on_source_and_names_what_was_not_cleaned(tmp_path: Path) -> None:
    hosts = Hosts()
    web = hosts.add_vm("web")
    hosts.down.add("host-b")
    record, _, _ = run_one(tmp_path, hosts, web)
    assert record.state is MoveState.RESTORED_ON_SOURCE and "could not be cleaned" in (record.error or "")
    back = hosts.source.peek_vm(web)
    assert back is not None and back.state is VmState.RUNNING
