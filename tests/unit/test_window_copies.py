"""Pre-copy during the window over in-memory hosts: destination chosen and journaled when the window opens,
passes under the transfer slots' rules, handover to the move, cancel, restart, and exactness of each pass."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from evacuator.hypervisor.facts import VmFacts
from evacuator.hypervisor.model import Hypervisor, VmState, VolumeRef
from evacuator.incident.planner import PlannedMove
from evacuator.lab.vms import domain_xml
from evacuator.migrate.converge import converge_volume, first_pass
from evacuator.migrate.factory import MigrationTimings, Migrators
from evacuator.migrate.precopy import finish_precopy
from evacuator.migrate.steps import PrecopiedVolume
from evacuator.moves import window_copy
from evacuator.moves.attempts import Attempts, EngineConfig
from evacuator.moves.cancel import cancel_moves
from evacuator.moves.destinations import Choice, Destinations, Held, Nowhere, StaticPeers
from evacuator.moves.engine import MoveEngine
from evacuator.moves.journal import Journal
from evacuator.moves.state import MoveRecord, MoveState, Phase, ResumeAction, resume_action
from evacuator.moves.transfer_slots import NoClusterCap, TransferSlots
from evacuator.moves.window_copies import WindowCopies
from evacuator.wiring.moves import assemble_engine
from tests.fakes.hypervisor import FakeHypervisor
from tests.fakes.outcomes import RecordedOutcomes

T0 = datetime(2026, 12, 5, 8, 0, tzinfo=UTC)
MIB = 1 << 20
POOL = "evacuator"
DATA = bytes(range(256)) * (4 * MIB // 256)  # 4 blocks, none a hole


class Hosts:
    def __init__(self) -> None:
        self.by_name = {name: FakeHypervisor(name=name) for name in ("host-a", "host-b", "host-c")}
        self.source = self.by_name["host-a"]

    @contextmanager
    def open(self, name: str) -> Iterator[Hypervisor]:
        yield self.by_name[name]

    def add_vm(self, name: str, *, group: str | None = None, boot_order: int | None = None) -> str:
        self.source.add_volume(POOL, f"{name}.raw", capacity_bytes=len(DATA), data=DATA)
        xml = domain_xml(name=name, pool=POOL, volume=f"{name}.raw", mac="52:54:00:00:00:01",
                         facts=VmFacts(tenant="acme", group=group, boot_order=boot_order),
                         uuid=str(uuid.uuid4()))
        return self.source.add_vm(xml, state=VmState.RUNNING).uuid

    def volume(self, host: str, name: str) -> bytes | None:
        found = (POOL, f"{name}.raw") in self.by_name[host].volume_names()
        return self.by_name[host].volume_bytes(POOL, f"{name}.raw") if found else None


def _clock() -> Callable[[], datetime]:
    """1 ms a look, whoever looks (a copy's time limit and the shutdown's deadline count these ticks)."""
    ticks = iter(range(10**9))
    return lambda: T0 + timedelta(milliseconds=next(ticks))


def _config(peers: tuple[str, ...] = ("host-b",)) -> EngineConfig:
    return EngineConfig(host="host-a", peers=peers, retry_initial_seconds=0,
                        precopy_pass_interval_seconds=0.01)


def _engine(hosts: Hosts, journal: Journal, config: EngineConfig | None = None, *,
            shutdown_timeout_seconds: float = 1) -> MoveEngine:
    timings = MigrationTimings(shutdown_timeout_seconds=shutdown_timeout_seconds)
    return assemble_engine(config or _config(), timings, journal=journal, hypervisor=hosts.source,
                           open_host=hosts.open, clock=_clock(), sleep=lambda s: None)


def _planned(vm_uuid: str, name: str, return_to: str | None = None) -> PlannedMove:
    return PlannedMove(vm_uuid=vm_uuid, vm_name=name, tenant="acme", window_seconds=30,
                       deadline=T0 + timedelta(seconds=30), return_to=return_to)


def _open_windows(engine: MoveEngine, moves: list[PlannedMove], outcomes: RecordedOutcomes | None = None,
                  ) -> None:
    """Plans the moves, starts the engine (every timer pending) and opens each move's window."""
    engine.plan(moves, may_restart_on_source=True)
    engine.start(timer_pending=lambda _: True, outcomes=outcomes or RecordedOutcomes())
    for move in moves:
        engine.mark(move.vm_uuid, MoveState.WAITING)


def _until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def test_the_window_opening_claims_and_journals_the_destination_and_pre_copies_what_the_guest_writes(
    tmp_path: Path,
) -> None:
    hosts, told = Hosts(), RecordedOutcomes()
    with Journal(tmp_path / "j.sqlite") as journal, capture_logs() as logs:
        engine = _engine(hosts, journal)
        web = hosts.add_vm("web")
        _open_windows(engine, [_planned(web, "web")], told)
        _until(lambda: hosts.volume("host-b", "web") == DATA)
        record = journal.get(web)
        assert record is not None and record.destination == "host-b"
        assert (record.state, record.phase) == (MoveState.WAITING, Phase.PRECOPYING)
        hosts.source.guest_write(POOL, "web.raw", 3 * MIB + 5, b"written in the window")
        final = hosts.volume("host-a", "web")
        _until(lambda: hosts.volume("host-b", "web") == final)  # a later pass sent the change
        assert engine.submit(web)
        assert engine.wait_idle(5)
        engine.stop()
        record = journal.get(web)
    assert record is not None and record.state is MoveState.DONE and told.failures == []
    assert hosts.volume("host-b", "web") == final and hosts.volume("host-a", "web") is None
    passes = [e for e in logs if e["event"] == "precopy_converged"]
    assert passes and all(e["patched_bytes"] <= MIB for e in passes), "only changed blocks travel again"
    finished = [e for e in logs if e["event"] == "precopy_finished"]
    assert len(finished) == 1 and finished[0]["patched_bytes"] == 0
    window_passes = [e for e in logs if e["event"] == "window_precopy_pass"]
    assert window_passes[0]["pass_bytes"] == len(DATA)  # the first pass sent the disk whole
    assert sum(e["pass_bytes"] for e in window_passes) == window_passes[-1]["sent_bytes"]
    history = [(state, phase) for state, phase, _ in journal_history(tmp_path, web)]
    assert (MoveState.WAITING, Phase.PRECOPYING) in history and (MoveState.WAITING, Phase.DUE) in history


def journal_history(tmp_path: Path, vm_uuid: str) -> tuple[tuple[MoveState, Phase, str | None], ...]:
    with Journal(tmp_path / "j.sqlite") as journal:
        return journal.history(vm_uuid)


def test_a_cancelled_move_removes_its_pre_copied_volume(tmp_path: Path) -> None:
    hosts = Hosts()
    with Journal(tmp_path / "j.sqlite") as journal, capture_logs() as logs:
        engine = _engine(hosts, journal)
        web = hosts.add_vm("web")
        _open_windows(engine, [_planned(web, "web")])
        _until(lambda: hosts.volume("host-b", "web") == DATA)
        assert cancel_moves(journal, web, "the tenant cancelled", lambda: T0)
        _until(lambda: hosts.volume("host-b", "web") is None)
        assert not engine.submit(web)
        engine.stop()
    assert hosts.volume("host-a", "web") == DATA and hosts.by_name["host-b"].list_vms() == ()
    assert any(e["event"] == "window_precopy_removed" for e in logs)


def test_a_restart_resumes_the_pre_copy_toward_the_journaled_destination(tmp_path: Path) -> None:
    hosts = Hosts()
    config = _config(peers=("host-b", "host-c"))
    with Journal(tmp_path / "j.sqlite") as journal:
        web = hosts.add_vm("web")
        first = _engine(hosts, journal, config)
        first.plan([_planned(web, "web")], may_restart_on_source=True)
        record = journal.get(web)
        assert record is not None
        # As a daemon killed mid-pass leaves it: waiting, pre-copying toward host-c, part of the disk there.
        journal.advance(record, MoveState.WAITING, Phase.PRECOPYING, T0, destination="host-c")
        hosts.by_name["host-c"].add_volume(POOL, "web.raw", capacity_bytes=len(DATA), data=DATA[:MIB])
        current = journal.get(web)
        assert current is not None
        assert resume_action(current, timer_pending=True) is ResumeAction.WAIT_FOR_TIMER
        engine = _engine(hosts, journal, config)
        engine.start(timer_pending=lambda _: True, outcomes=RecordedOutcomes())
        _until(lambda: hosts.volume("host-c", "web") == DATA)
        assert engine.submit(web) and engine.wait_idle(5)
        engine.stop()
        record = journal.get(web)
    assert record is not None and record.state is MoveState.DONE and record.destination == "host-c"
    assert hosts.volume("host-b", "web") is None and hosts.volume("host-c", "web") == DATA


def test_a_move_back_pre_copies_only_to_its_origin(tmp_path: Path) -> None:
    hosts = Hosts()
    with Journal(tmp_path / "j.sqlite") as journal:
        engine = _engine(hosts, journal)  # host-b is the only peer; the origin is host-c
        web = hosts.add_vm("web")
        _open_windows(engine, [_planned(web, "web", return_to="host-c")])
        _until(lambda: hosts.volume("host-c", "web") == DATA)
        record = journal.get(web)
        engine.stop()
    assert record is not None and record.destination == "host-c" and hosts.volume("host-b", "web") is None


class _Claims(StaticPeers):
    """The static peers, each destination held by a claim whose release is counted."""

    def __init__(self, peers: tuple[str, ...]) -> None:
        super().__init__(peers)
        self.released: list[str] = []

    def choose(self, records: Sequence[MoveRecord], tried: Collection[str], *,
               only: str | None = None) -> Choice:  # fmt: skip
        chosen = super().choose(records, tried, only=only)
        if isinstance(chosen, Nowhere):
            return chosen
        return Held(host=chosen.host, claim_id="c1", release=lambda: self.released.append(chosen.host))


def _window(hosts: Hosts, journal: Journal, slots: TransferSlots,
            paused: Callable[[], bool] = lambda: False, destinations: Destinations | None = None,
            ) -> WindowCopies:
    clock = _clock()
    attempts = Attempts(config=_config(), journal=journal, open_host=hosts.open, clock=clock,
                        destinations=destinations, sleep=lambda s: None, slots=slots,
                        cluster_slots=NoClusterCap(),
                        migrators=Migrators(MigrationTimings(shutdown_timeout_seconds=1), clock=clock,
                                            sleep=lambda s: None))  # fmt: skip
    return WindowCopies(attempts, limit_for=lambda volume: 60.0, paused=paused)


def _open_and_hold(window: WindowCopies, journal: Journal, vm_uuid: str) -> None:
    """Opens the VM's window, waits until its destination is journaled, then long enough for a first pass
    to have begun, were one allowed."""
    record = journal.get(vm_uuid)
    assert record is not None
    window.begin(record)
    _until(lambda: (r := journal.get(vm_uuid)) is not None and r.phase is Phase.PRECOPYING)
    time.sleep(0.3)


def test_a_pre_copy_takes_a_slot_only_when_one_is_free(tmp_path: Path) -> None:
    hosts = Hosts()
    slots = TransferSlots(max_outgoing=1, max_incoming_per_peer=1)
    with Journal(tmp_path / "j.sqlite") as journal:
        web = hosts.add_vm("web")
        _engine(hosts, journal).plan([_planned(web, "web")], may_restart_on_source=True)
        window = _window(hosts, journal, slots)
        with slots.slot("host-b", vm_uuid="due-move"):  # a move whose window ended holds the only slot
            _open_and_hold(window, journal, web)
            assert hosts.volume("host-b", "web") is None, "no pass without a free slot"
        _until(lambda: hosts.volume("host-b", "web") == DATA)
        handed = window.take(web, "host-b")
    assert handed is not None and handed.held.host == "host-b"
    assert set(handed.precopied) == {VolumeRef(pool=POOL, volume="web.raw")}


def test_a_pre_copy_toward_another_host_than_the_journaled_one_is_not_handed_over_and_its_claim_is_released(
    tmp_path: Path,
) -> None:
    hosts, claims = Hosts(), _Claims(("host-b",))
    with Journal(tmp_path / "j.sqlite") as journal:
        web = hosts.add_vm("web")
        _engine(hosts, journal).plan([_planned(web, "web")], may_restart_on_source=True)
        window = _window(hosts, journal, TransferSlots(max_outgoing=1, max_incoming_per_peer=1),
                         destinations=claims)
        record = journal.get(web)
        assert record is not None
        window.begin(record)
        _until(lambda: hosts.volume("host-b", "web") == DATA)
        assert window.take(web, "host-c") is None  # the move's journal says host-c now
        assert claims.released == ["host-b"] and window.running() == ()


def test_the_cloud_wide_pause_holds_every_pass_until_it_is_lifted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(window_copy, "PAUSE_LOOK_SECONDS", 0.05)
    hosts, pause = Hosts(), threading.Event()
    pause.set()  # `evacuator pause` was run before the window opened
    with Journal(tmp_path / "j.sqlite") as journal, capture_logs() as logs:
        web = hosts.add_vm("web")
        _engine(hosts, journal).plan([_planned(web, "web")], may_restart_on_source=True)
        window = _window(hosts, journal, TransferSlots(max_outgoing=1, max_incoming_per_peer=1),
                         paused=pause.is_set)
        _open_and_hold(window, journal, web)
        assert hosts.volume("host-b", "web") is None, "a pass started while paused"
        assert [e["event"] for e in logs if e["event"].startswith("window_precopy_")] == [
            "window_precopy_started", "window_precopy_paused"]  # said once, however often it looked
        pause.clear()  # `evacuator resume`
        _until(lambda: hosts.volume("host-b", "web") == DATA)
        handed = window.take(web, "host-b")
    assert handed is not None and handed.held.host == "host-b"
    assert any(e["event"] == "window_precopy_resumed" for e in logs)


def test_a_pre_copy_gives_its_slot_up_at_once_when_a_due_move_waits_for_one(tmp_path: Path) -> None:
    hosts = Hosts()
    slots = TransferSlots(max_outgoing=1, max_incoming_per_peer=1)
    waited: list[float] = []

    def due_move() -> None:
        began = time.monotonic()
        with slots.slot("host-b", vm_uuid="due-move"):
            waited.append(time.monotonic() - began)

    mover = threading.Thread(target=due_move)

    def guest(offset: int) -> None:
        if offset == 2 * MIB and not mover.is_alive() and not waited:  # mid-pass, holding the slot
            mover.start()
            _until(slots.wanted)

    with Journal(tmp_path / "j.sqlite") as journal, capture_logs() as logs:
        web = hosts.add_vm("web")
        _engine(hosts, journal).plan([_planned(web, "web")], may_restart_on_source=True)
        hosts.source.before_live_read = guest
        window = _window(hosts, journal, slots)
        record = journal.get(web)
        assert record is not None
        window.begin(record)
        _until(lambda: bool(waited))
        mover.join()
        window.stop()
    assert waited[0] < 2.0
    assert not [e for e in logs if e["event"] == "window_precopy_pass"], "the stopped pass did not count"


def _first_passed() -> tuple[Hosts, VolumeRef, PrecopiedVolume, Callable[[], datetime]]:
    """host-a's volume d.raw, its first pass to host-b done: the hosts, the volume, what was sent, a clock."""
    hosts = Hosts()
    source, destination = hosts.source, hosts.by_name["host-b"]
    source.add_volume(POOL, "d.raw", capacity_bytes=len(DATA), data=DATA)
    volume = source.find_volume(POOL, "d.raw")
    assert volume is not None
    clock = _clock()
    copied = first_pass(source, destination, volume, limit_seconds=60, clock=clock, stop=lambda: False)
    assert copied is not None and destination.volume_bytes(POOL, "d.raw") == DATA
    return hosts, VolumeRef(pool=POOL, volume="d.raw"), copied, clock


@pytest.mark.parametrize("stop_after_chunks", [0, 1, 2, 5])
def test_a_pass_stopped_anywhere_still_ends_in_an_exact_copy(stop_after_chunks: int) -> None:
    hosts, ref, copied, clock = _first_passed()
    source, destination = hosts.source, hosts.by_name["host-b"]
    for offset in (0, MIB + 3, 3 * MIB + 100):
        source.guest_write(POOL, "d.raw", offset, b"new bytes")
    asked = iter(range(100))
    stopped = converge_volume(source, destination, ref, copied, limit_seconds=60, clock=clock,
                              stop=lambda: next(asked) >= stop_after_chunks)  # fmt: skip
    assert stopped is not None and stopped.settled_bytes == stopped.length_bytes
    source.guest_write(POOL, "d.raw", 2 * MIB, b"after the pass")  # the guest goes on, then it is off
    finished = finish_precopy(source, destination, ref, stopped, limit_seconds=60, clock=clock)
    assert finished is not None
    assert destination.volume_bytes(POOL, "d.raw") == source.volume_bytes(POOL, "d.raw")


def test_a_pass_stopped_inside_a_block_ends_with_that_block_and_keeps_every_digest_whole() -> None:
    hosts, ref, copied, clock = _first_passed()
    source, destination = hosts.source, hosts.by_name["host-b"]
    for offset in (0, MIB + 3, 3 * MIB + 100):  # blocks 0, 1 and 3 change
        source.guest_write(POOL, "d.raw", offset, b"new bytes")
    wanted = threading.Event()  # a due move wants the slot once the pass is 44 KiB into block 1

    def reading(offset: int) -> None:
        if offset >= MIB + 44 * 4096:
            wanted.set()

    source.before_live_read = reading  # the fake reads 4 KiB at a time
    with capture_logs() as logs:
        stopped = converge_volume(source, destination, ref, copied, limit_seconds=60, clock=clock,
                                  stop=wanted.is_set)  # fmt: skip
    assert stopped is not None
    [converged] = [e for e in logs if e["event"] == "precopy_converged"]
    # Block 1 was read to its end and no further, and both changed blocks went whole.
    assert (converged["read_bytes"], converged["patched_bytes"]) == (2 * MIB, 2 * MIB)
    finished = finish_precopy(source, destination, ref, stopped, limit_seconds=60, clock=clock)
    assert finished is not None and finished.bytes_written == MIB  # block 3 alone: 0 and 1 went whole
    assert destination.volume_bytes(POOL, "d.raw") == source.volume_bytes(POOL, "d.raw")


def test_slots_say_whether_a_move_waits_for_one() -> None:
    slots = TransferSlots(max_outgoing=1, max_incoming_per_peer=1)
    assert not slots.wanted()
    def wait_for_one() -> None:
        with slots.slot("host-b"):
            pass

    with slots.slot("host-b"):
        waiter = threading.Thread(target=wait_for_one)
        waiter.start()
        _until(slots.wanted)
    waiter.join(5)
    assert not slots.wanted()
