"""The move engine and its journal over fake hosts: every step journaled, resumed after a crash anywhere."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from evacuator.errors import HypervisorError, JournalError
from evacuator.hypervisor.facts import MoveMethod, VmFacts
from evacuator.hypervisor.model import Hypervisor, VmState
from evacuator.incident.planner import PlannedMove
from evacuator.lab.vms import domain_xml
from evacuator.migrate.factory import MigrationTimings
from evacuator.migrate.steps import MoveStep
from evacuator.moves.attempts import EngineConfig
from evacuator.moves.cancel import cancel_moves
from evacuator.moves.engine import MoveEngine
from evacuator.moves.journal import Journal
from evacuator.moves.state import MoveRecord, MoveState, Phase
from evacuator.transfer.chunks import Chunk
from evacuator.wiring.moves import assemble_engine
from tests.fakes.hypervisor import FakeHypervisor
from tests.fakes.outcomes import RecordedOutcomes

T0 = datetime(2026, 11, 25, 4, 0, tzinfo=UTC)
POOL = "evacuator"
DATA = b"evacuator" * 1000


class Crash(BaseException):
    """Stands for SIGKILL: nothing after it runs (the worker thread dies with it)."""


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

    def add_vm(self, name: str, facts: VmFacts | None = None) -> str:
        self.source.add_volume(POOL, f"{name}.raw", capacity_bytes=64 * 1024, data=DATA)
        xml = domain_xml(name=name, pool=POOL, volume=f"{name}.raw", mac="52:54:00:00:00:01",
                         facts=facts or VmFacts(tenant="acme"), uuid=str(uuid.uuid4()))
        return self.source.add_vm(xml, state=VmState.RUNNING).uuid


def make_engine(
    hosts: Hosts, journal: Journal, crash_at: str | None = None, peers: tuple[str, ...] = ("host-b",),
    max_outgoing_moves: int = 2, quiesce_ahead_moves: int = 2,
) -> MoveEngine:
    ticks = iter(range(10**6))

    def crash_point(step: str, phase: Phase) -> None:
        if f"{step}:{phase}" == crash_at:
            raise Crash(crash_at)

    return assemble_engine(
        EngineConfig(host="host-a", peers=peers, retry_initial_seconds=0,
                     max_outgoing_moves=max_outgoing_moves, quiesce_ahead_moves=quiesce_ahead_moves),
        MigrationTimings(shutdown_timeout_seconds=1),
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
    hosts, told = Hosts(), RecordedOutcomes()
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
    hosts, told = Hosts(), RecordedOutcomes()
    web = hosts.add_vm("web")
    with Journal(tmp_path / "j.sqlite") as journal:
        crashing = make_engine(hosts, journal, crash_at=crash_at)
        crashing.plan([planned(web, "web")], may_restart_on_source=True)
        crashing.start(timer_pending=lambda _: True, outcomes=told)
        with contextlib.suppress(Crash):  # "due" is journaled on the caller's thread: it crashes there
            crashing.submit(web)
        crashing.wait_idle(5)
        crashing.stop(5)
        at_crash = journal.get(web)
        assert at_crash is not None and f"{at_crash.step or 'due'}:{at_crash.phase}".endswith(
            crash_at.split(":")[1]), "the process died right after journaling the crash point"
        assert at_crash.step in (crash_at.split(":")[0], None, "clean_up")
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


def test_a_cancelled_move_is_never_moved(tmp_path: Path) -> None:
    hosts = Hosts()
    web = hosts.add_vm("web")
    with Journal(tmp_path / "j.sqlite") as journal:
        engine = make_engine(hosts, journal)
        engine.plan([planned(web, "web")], may_restart_on_source=True)
        cancelled = cancel_moves(journal, web, "tenant asked", lambda: T0)
        assert [r.state for r in cancelled] == [MoveState.CANCELLED]
        assert cancel_moves(journal, web, "again", lambda: T0) == ()
        assert not engine.submit(web), "a cancelled move's timer that still fires moves nothing"
        engine.start(timer_pending=lambda _: False)
        assert engine.wait_idle(5)
        engine.stop()
    assert hosts.source.peek_vm(web) is not None and hosts.destination.peek_vm(web) is None


def run_one(
    tmp_path: Path, hosts: Hosts, vm_uuid: str, *, peers: tuple[str, ...] = ("host-b",),
    may_restart_on_source: bool = True,
) -> tuple[MoveRecord, RecordedOutcomes, tuple[tuple[MoveState, Phase, str | None], ...]]:
    told = RecordedOutcomes()
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
    # The pool stays full: every write fails, the pre-copy's (while the VM shuts down) and each attempt's.
    hosts.destination.inject_error("write_volume", HypervisorError("host-b: no space left"), times=100)
    record, told, history = run_one(tmp_path, hosts, web)
    assert record.state is MoveState.RESTORED_ON_SOURCE and "no space left" in (record.error or "")
    assert MoveState.ROLLING_BACK in [state for state, _, _ in history]
    back = hosts.source.peek_vm(web)
    assert back is not None and back.state is VmState.RUNNING
    assert hosts.destination.list_vms() == () and hosts.destination.volume_names() == ()
    assert hosts.destination.calls.count(f"write_volume {POOL} web.raw") == 4, \
        "a pre-copy, three attempts, then rollback"
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
    hosts.destination.inject_error("create_volume", HypervisorError("host-b: pool full"), times=100)
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


def run_all(
    tmp_path: Path, hosts: Hosts, vms: dict[str, str], *, due: list[str] | None = None,
    max_outgoing_moves: int = 2, quiesce_ahead_moves: int = 2,
) -> tuple[dict[str, MoveRecord], RecordedOutcomes]:
    """Plans every VM, makes `due` (default: all) due before the workers start, runs to idle."""
    told = RecordedOutcomes()
    with Journal(tmp_path / "j.sqlite") as journal:
        engine = make_engine(hosts, journal, max_outgoing_moves=max_outgoing_moves,
                             quiesce_ahead_moves=quiesce_ahead_moves)
        engine.plan([planned(u, n) for n, u in vms.items()], may_restart_on_source=True)
        for name in due or list(vms):
            engine.submit(vms[name])
        engine.start(timer_pending=lambda _: True, outcomes=told)
        assert engine.wait_idle(5)
        engine.stop()
        records = {name: journal.get(u) for name, u in vms.items()}
    assert all(r is not None for r in records.values())
    return {name: r for name, r in records.items() if r is not None}, told


def group_of_two(hosts: Hosts) -> dict[str, str]:
    # Named against their boot order, so that a name sort would start them the wrong way round.
    return {
        "app": hosts.add_vm("app", VmFacts(tenant="acme", group="shop", boot_order=2)),
        "db": hosts.add_vm("db", VmFacts(tenant="acme", group="shop", boot_order=1)),
    }


def test_a_group_is_quiesced_together_and_started_in_boot_order(tmp_path: Path) -> None:
    hosts = Hosts()
    vms = group_of_two(hosts)
    records, told = run_all(tmp_path, hosts, vms, due=["app"])  # one member due: the whole group moves
    assert {r.state for r in records.values()} == {MoveState.DONE}
    calls = hosts.source.calls
    last_shutdown = max(calls.index(f"request_shutdown {u}") for u in vms.values())
    assert last_shutdown < min(calls.index(f"destroy_vm {u}") for u in vms.values())
    starts = [call for call in hosts.destination.calls if call.startswith("start_vm")]
    assert starts == [f"start_vm {vms['db']}", f"start_vm {vms['app']}"]
    assert hosts.source.list_vms() == () and len(told.moves) == 2


def test_a_group_moves_all_or_nothing(tmp_path: Path) -> None:
    hosts = Hosts()
    vms = group_of_two(hosts)
    # The second to start cannot: the first, already running on host-b, must come back too.
    hosts.destination.inject_error("start_vm", HypervisorError("host-b: cannot start"), times=3,
                                   after_calls=1)
    records, told = run_all(tmp_path, hosts, vms)
    assert {r.state for r in records.values()} == {MoveState.RESTORED_ON_SOURCE}
    assert {vm.name: vm.state for vm in hosts.source.list_vms()} == {"app": VmState.RUNNING,
                                                                    "db": VmState.RUNNING}
    assert hosts.destination.list_vms() == () and hosts.destination.volume_names() == ()
    assert len(told.failures) == 2 and told.moves == []


def test_higher_priority_moves_first_when_the_cap_makes_moves_queue(tmp_path: Path) -> None:
    hosts = Hosts()
    vms = {name: hosts.add_vm(name, VmFacts(tenant="acme", priority=priority))
           for name, priority in (("low", -1), ("mid", 0), ("top", 5))}
    run_all(tmp_path, hosts, vms, max_outgoing_moves=1, quiesce_ahead_moves=0)
    defined = [call.split()[-1] for call in hosts.source.calls if call.startswith("undefine_vm")]
    assert defined == [vms["top"], vms["mid"], vms["low"]]


@pytest.mark.parametrize("ahead", [0, 2])
def test_disks_travel_under_the_transfer_cap_while_other_vms_shut_down_ahead(
    tmp_path: Path, ahead: int
) -> None:
    hosts = Hosts()
    vms = {f"vm{index}": hosts.add_vm(f"vm{index}") for index in range(8)}
    lock = threading.Lock()
    copying = off = worst_copying = worst_off = 0
    overlapped = False
    write, destroy, start = (hosts.destination.write_volume, hosts.source.destroy_vm,
                             hosts.destination.start_vm)

    def slow_write(pool: str, volume: str, chunks: Iterable[Chunk]) -> int:
        nonlocal copying, worst_copying
        with lock:
            copying += 1
            worst_copying = max(worst_copying, copying)
        time.sleep(0.05)
        try:
            return write(pool, volume, chunks)
        finally:
            with lock:
                copying -= 1

    def counted_destroy(vm_uuid: str) -> None:  # the fake guests ignore ACPI: destroy ends each quiesce
        nonlocal off, worst_off, overlapped
        destroy(vm_uuid)
        with lock:
            off += 1
            worst_off = max(worst_off, off)
            overlapped = overlapped or copying > 0

    def counted_start(vm_uuid: str) -> None:
        nonlocal off
        start(vm_uuid)
        with lock:
            off -= 1

    hosts.destination.write_volume = slow_write  # type: ignore[method-assign]
    hosts.source.destroy_vm = counted_destroy  # type: ignore[method-assign]
    hosts.destination.start_vm = counted_start  # type: ignore[method-assign]

    records, _ = run_all(tmp_path, hosts, vms, quiesce_ahead_moves=ahead)

    assert {r.state for r in records.values()} == {MoveState.DONE}
    assert worst_copying == 2  # the cap, reached and never passed
    assert worst_off <= 2 + ahead  # VMs held off: those transferring plus those shut down ahead
    if ahead:
        assert overlapped  # a VM was shut down while another's disks travelled
        assert worst_off > 2  # some VM was shut down ahead, while both slots were busy


@pytest.mark.parametrize(("method", "live_fails", "state", "live_calls"), [
    (MoveMethod.LIVE, False, MoveState.DONE, 1),
    (MoveMethod.LIVE_THEN_COLD, True, MoveState.DONE, 1),
    (MoveMethod.LIVE, True, MoveState.RESTORED_ON_SOURCE, 3),
])  # fmt: skip
def test_live_methods(
    tmp_path: Path, method: MoveMethod, live_fails: bool, state: MoveState, live_calls: int
) -> None:
    hosts = Hosts()
    web = hosts.add_vm("web", VmFacts(tenant="acme", method=method))
    if live_fails:
        hosts.source.inject_error("migrate_live", HypervisorError("host-a: migration refused"), times=3)
    records, _ = run_all(tmp_path, hosts, {"web": web})
    assert records["web"].state is state
    assert hosts.source.calls.count(f"migrate_live {web}") == live_calls
    where = hosts.destination if state is MoveState.DONE else hosts.source
    vm = where.peek_vm(web)
    assert vm is not None and vm.state is VmState.RUNNING
    if state is MoveState.DONE:
        assert hosts.source.volume_names() == () and hosts.source.peek_vm(web) is None
        assert hosts.destination.volume_bytes(POOL, "web.raw")[: len(DATA)] == DATA


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.parametrize("crash_at", ["quiesce:finished", "define:finished", "start:finished",
                                      "clean_up:started", "rolling_back:started"])
def test_a_group_interrupted_anywhere_ends_whole_after_restart(tmp_path: Path, crash_at: str) -> None:
    hosts = Hosts()
    vms = group_of_two(hosts)
    if crash_at.startswith("rolling_back"):
        hosts.destination.inject_error("start_vm", HypervisorError("host-b: cannot start"), times=3,
                                       after_calls=1)
    with Journal(tmp_path / "j.sqlite") as journal:
        crashing = make_engine(hosts, journal, crash_at=crash_at)
        crashing.plan([planned(u, n) for n, u in vms.items()], may_restart_on_source=True)
        crashing.submit(vms["app"])
        crashing.start(timer_pending=lambda _: True)
        crashing.wait_idle(5)
        crashing.stop(5)
        assert {r.state for r in journal.all()} & {MoveState.DONE, MoveState.RESTORED_ON_SOURCE} == set()
        restarted = make_engine(hosts, journal)
        restarted.start(timer_pending=lambda _: False)
        assert restarted.wait_idle(5)
        restarted.stop()
        states = {r.state for r in journal.all()}
    if crash_at.startswith("rolling_back"):
        assert states == {MoveState.RESTORED_ON_SOURCE}
        assert {vm.state for vm in hosts.source.list_vms()} == {VmState.RUNNING}
        assert hosts.destination.list_vms() == ()
    else:
        assert states == {MoveState.DONE}
        assert {vm.name: vm.state for vm in hosts.destination.list_vms()} == {
            "app": VmState.RUNNING, "db": VmState.RUNNING}
        assert hosts.source.list_vms() == () and hosts.source.volume_names() == ()
