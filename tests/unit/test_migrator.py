"""ColdMigrator against in-memory hypervisors: step order, timeout path, refusals, retry after any crash."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from evacuator.errors import HypervisorError, MigrationError
from evacuator.hypervisor.facts import VmFacts
from evacuator.hypervisor.model import VmState
from evacuator.lab.vms import domain_xml
from evacuator.migrate.cold import ColdMigrator
from evacuator.migrate.steps import MoveReport, MoveStep, StepEvent, StepPhase
from evacuator.transfer.chunks import Chunk, DataChunk
from tests.fakes.hypervisor import FakeHypervisor

UUID = "0b5e1f0a-5c1e-4d2a-9a51-3f7f4c2d9e01"
POOL = "evacuator"
VOLUME = "web-1.raw"
MAC = "52:54:00:12:34:56"
DATA = bytes(range(256)) * 48  # 12 KiB, three fake blocks of data
CAPACITY_BYTES = 64 * 1024
FACTS = VmFacts(tenant="acme", window_seconds=600)
T0 = datetime(2026, 11, 25, 3, 0, tzinfo=UTC)


@dataclass
class FakeClock:
    now: datetime = T0
    slept_seconds: list[float] = field(default_factory=list)

    def __call__(self) -> datetime:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept_seconds.append(seconds)
        self.now += timedelta(seconds=seconds)


@dataclass
class World:
    source: FakeHypervisor
    destination: FakeHypervisor
    clock: FakeClock
    events: list[StepEvent]

    def migrator(self, *, timeout_seconds: float = 3.0) -> ColdMigrator:
        return ColdMigrator(
            source=self.source, destination=self.destination, clock=self.clock,
            shutdown_timeout_seconds=timeout_seconds, sleep=self.clock.sleep, on_step=self.observe,
            poll_interval_seconds=0.5,
        )

    def observe(self, event: StepEvent) -> None:
        """Checks the invariants at every step boundary, then records the event."""
        running = [hv.name for hv in (self.source, self.destination) if _state(hv) is VmState.RUNNING]
        assert len(running) <= 1, f"two running copies at {event}"
        if (POOL, VOLUME) not in self.source.volume_names():
            assert self.destination.volume_bytes(POOL, VOLUME)[: len(DATA)] == DATA, f"disk lost at {event}"
        self.events.append(event)


def _state(hv: FakeHypervisor) -> VmState | None:
    vm = hv.peek_vm(UUID)
    return None if vm is None else vm.state


def make_world(*, state: VmState = VmState.RUNNING, honours_acpi: bool = False) -> World:
    source = FakeHypervisor(name="host-a", honours_acpi=honours_acpi)
    source.add_volume(POOL, VOLUME, capacity_bytes=CAPACITY_BYTES, data=DATA)
    source.add_vm(domain_xml(name="web-1", pool=POOL, volume=VOLUME, mac=MAC, facts=FACTS, uuid=UUID),
                  state=state)
    return World(source=source, destination=FakeHypervisor(name="host-b", honours_acpi=honours_acpi),
                 clock=FakeClock(), events=[])


def assert_moved(world: World, *, running: bool) -> None:
    moved = world.destination.find_vm(UUID)
    assert moved is not None
    assert (moved.name, moved.macs, moved.facts) == ("web-1", (MAC,), FACTS)
    assert moved.state is (VmState.RUNNING if running else VmState.SHUT_OFF)
    assert world.destination.volume_bytes(POOL, VOLUME) == DATA + bytes(CAPACITY_BYTES - len(DATA))
    assert world.source.find_vm(UUID) is None
    assert world.source.volume_names() == ()


def test_running_vm_moves_through_every_step_in_order() -> None:
    world = make_world()
    report = world.migrator().move(UUID)
    assert [(event.step, event.phase) for event in world.events] == [
        (step, phase) for step in MoveStep for phase in (StepPhase.STARTED, StepPhase.FINISHED)
    ]
    assert_moved(world, running=True)
    assert report.bytes_copied == len(DATA)
    assert world.source.calls.count(f"read_volume {POOL} {VOLUME}") == 1, "hashed while copying"
    assert (report.vm_name, report.source, report.destination) == ("web-1", "host-a", "host-b")
    assert report.running_on_destination


def test_guest_ignoring_acpi_is_destroyed_after_the_shutdown_timeout() -> None:
    world = make_world()
    report = world.migrator(timeout_seconds=3.0).move(UUID)
    quiesce = report.steps[0]
    assert (quiesce.step, quiesce.seconds) == (MoveStep.QUIESCE, 3.0)
    assert report.forced_off
    calls = world.source.calls
    assert calls.index(f"request_shutdown {UUID}") < calls.index(f"destroy_vm {UUID}")
    finished = [event for event in world.events if event.phase is StepPhase.FINISHED]
    assert (finished[0].at, finished[0].seconds) == (T0 + timedelta(seconds=3), 3.0)


def test_guest_honouring_acpi_is_not_destroyed() -> None:
    world = make_world(honours_acpi=True)
    report = world.migrator().move(UUID)
    assert not report.forced_off
    assert f"destroy_vm {UUID}" not in world.source.calls
    assert world.clock.slept_seconds == [], "the fake's guest is off when first looked at: no sleep"
    assert_moved(world, running=True)


def test_refused_shutdown_request_powers_off_at_once() -> None:
    world = make_world()
    world.source.inject_error("request_shutdown", HypervisorError("host-a: domain is paused"))
    report = world.migrator(timeout_seconds=3.0).move(UUID)
    assert report.forced_off and report.steps[0].seconds == 0.0
    assert world.clock.slept_seconds == []
    assert_moved(world, running=True)


def test_shut_off_vm_moves_without_being_started() -> None:
    world = make_world(state=VmState.SHUT_OFF)
    report = world.migrator().move(UUID)
    skipped = [timing.step for timing in report.steps if timing.skipped]
    assert skipped == [MoveStep.QUIESCE, MoveStep.START]
    assert_moved(world, running=False)
    assert not report.running_on_destination


def test_moving_an_already_moved_vm_only_verifies() -> None:
    world = make_world()
    world.migrator().move(UUID)
    again = world.migrator().move(UUID)
    assert [timing.step for timing in again.steps if not timing.skipped] == [MoveStep.VERIFY]
    assert again.bytes_copied == 0
    assert_moved(world, running=True)


# A refused ACPI request is not fatal: the migrator powers the VM off instead (tested on its own).
TOLERATED = {"source": {"request_shutdown"}}


def _crash_points() -> list[tuple[str, str, int]]:
    """Every (host, operation, nth call) a clean move makes, up to the third call of each operation."""
    world = make_world()
    world.migrator().move(UUID)
    points: list[tuple[str, str, int]] = []
    for side, calls in (("source", world.source.calls), ("destination", world.destination.calls)):
        operations = [call.split()[0] for call in calls]
        for operation in sorted(set(operations) - TOLERATED.get(side, set())):
            points += [(side, operation, nth) for nth in range(1, min(operations.count(operation), 3) + 1)]
    return points


@pytest.mark.parametrize(("side", "operation", "nth_call"), _crash_points())
def test_retry_after_a_crash_at_any_call_completes_the_move(side: str, operation: str, nth_call: int) -> None:
    world = make_world()
    hv = world.source if side == "source" else world.destination
    hv.inject_error(operation, HypervisorError(f"host {hv.name}: simulated crash"), after_calls=nth_call - 1)
    with pytest.raises(MigrationError):
        world.migrator().move(UUID)
    world.migrator().move(UUID, start_on_destination=True)
    assert_moved(world, running=True)


def test_crash_mid_copy_leaves_a_partial_volume_that_the_retry_replaces() -> None:
    world = make_world()
    world.destination.add_volume(POOL, VOLUME, capacity_bytes=CAPACITY_BYTES, data=b"partial")
    world.migrator().move(UUID)
    assert_moved(world, running=True)
    assert f"delete_volume {POOL} {VOLUME}" in world.destination.calls


def test_retry_without_the_journaled_intent_leaves_the_vm_off() -> None:
    world = make_world()
    world.destination.inject_error("create_volume", HypervisorError("host-b: disk full"))
    with pytest.raises(MigrationError, match="copy_disks") as raised:
        world.migrator().move(UUID)
    assert raised.value.step == MoveStep.COPY_DISKS
    world.migrator().move(UUID)
    assert_moved(world, running=False)


def test_vm_running_on_both_hosts_is_left_alone() -> None:
    world = make_world()
    world.destination.add_vm(world.source.vm_definition_xml(UUID), state=VmState.RUNNING)
    calls_before = len(world.source.calls)
    with pytest.raises(MigrationError, match="refusing to touch either") as raised:
        world.migrator().move(UUID)
    assert raised.value.step == "locate"
    assert [call.split()[0] for call in world.source.calls[calls_before:]] == ["find_vm"]


def test_vm_restarted_on_the_source_after_its_definition_moved_is_left_alone() -> None:
    world = make_world(state=VmState.SHUT_OFF)
    world.destination.inject_error("start_vm", HypervisorError("host-b: simulated crash"))
    with pytest.raises(MigrationError):
        world.migrator().move(UUID, start_on_destination=True)
    world.source.start_vm(UUID)
    with pytest.raises(MigrationError, match="copy that may be stale"):
        world.migrator().move(UUID, start_on_destination=True)
    assert _state(world.source) is VmState.RUNNING and _state(world.destination) is VmState.SHUT_OFF


def test_unknown_vm_is_refused() -> None:
    world = make_world()
    with pytest.raises(MigrationError, match="defined on neither"):
        world.migrator().move("11111111-2222-3333-4444-555555555555")


def test_destination_volume_of_another_vm_is_never_overwritten() -> None:
    world = make_world()
    world.destination.add_volume(POOL, VOLUME, capacity_bytes=4096, data=b"theirs")
    world.destination.add_vm(domain_xml(name="other", pool=POOL, volume=VOLUME, mac="52:54:00:00:00:09",
                                        facts=VmFacts(), uuid="9" * 32))
    with pytest.raises(MigrationError, match="belongs to another VM"):
        world.migrator().move(UUID)
    assert world.destination.volume_bytes(POOL, VOLUME)[:6] == b"theirs"
    assert world.source.find_vm(UUID) is not None and (POOL, VOLUME) in world.source.volume_names()


class CorruptingHypervisor(FakeHypervisor):
    """A destination whose disk writes flip the first byte: verification must catch it."""

    def write_volume(self, pool: str, volume: str, chunks: Iterable[Chunk]) -> int:
        def corrupted() -> Iterable[Chunk]:
            for index, chunk in enumerate(chunks):
                if index == 0 and isinstance(chunk, DataChunk):
                    yield DataChunk(data=bytes([chunk.data[0] ^ 0xFF]) + chunk.data[1:])
                else:
                    yield chunk
        return super().write_volume(pool, volume, corrupted())


def test_a_corrupted_copy_is_never_defined_and_the_source_is_kept() -> None:
    world = make_world()
    world.destination = CorruptingHypervisor(name="host-b")
    with pytest.raises(MigrationError, match="differs after copy") as raised:
        world.migrator().move(UUID)
    assert raised.value.step == MoveStep.VERIFY_DISKS
    assert world.destination.find_vm(UUID) is None
    assert world.source.volume_bytes(POOL, VOLUME)[: len(DATA)] == DATA
    assert world.events[-1].phase is StepPhase.FAILED
    assert world.events[-1].error is not None and "differs after copy" in world.events[-1].error


def test_report_times_each_step_with_the_injected_clock() -> None:
    world = make_world()
    report: MoveReport = world.migrator(timeout_seconds=2.0).move(UUID)
    assert {timing.step: timing.seconds for timing in report.steps} == {
        step: (2.0 if step is MoveStep.QUIESCE else 0.0) for step in MoveStep
    }
    assert report.seconds == 2.0


@pytest.mark.parametrize("seed", range(40))
def test_block_digest_depends_only_on_content_holes_and_zeros_alike(seed: int) -> None:
    import random

    from evacuator.transfer.chunks import HoleChunk
    from evacuator.transfer.digests import block_digest_of_chunks

    rng, mib = random.Random(seed), 1 << 20
    chunks: list[Chunk] = []
    for _ in range(rng.randint(1, 8)):
        size = rng.choice([1, 4096, mib - 1, mib, mib + 3, 3 * mib])
        if rng.random() < 0.4:
            chunks.append(HoleChunk(length_bytes=size))
        else:
            chunks.append(DataChunk(data=bytes(size) if rng.random() < 0.2 else rng.randbytes(size)))
    content = b"".join(c.data if isinstance(c, DataChunk) else bytes(c.length_bytes) for c in chunks)
    assert block_digest_of_chunks(chunks) == block_digest_of_chunks([DataChunk(data=content)])
    changed = bytearray(content)
    changed[rng.randrange(len(content))] ^= 1
    assert block_digest_of_chunks(chunks) != block_digest_of_chunks([DataChunk(data=bytes(changed))])
