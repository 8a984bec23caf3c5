"""Pre-copy during shutdown: which bytes are read again, which blocks are written again, and the migrator's
use of it over in-memory hosts (guests that write, go off, or whose file is replaced meanwhile)."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from structlog.testing import capture_logs

from evacuator.errors import HypervisorError, MigrationError
from evacuator.hypervisor.facts import VmFacts
from evacuator.hypervisor.model import VmState
from evacuator.lab.vms import domain_xml
from evacuator.migrate.cold import ColdMigrator
from evacuator.migrate.precopy import changed_blocks, unsettled_ranges
from evacuator.migrate.steps import MoveReport, MoveStep, StepEvent, StepPhase
from evacuator.transfer.chunks import Chunk, DataChunk, HoleChunk
from evacuator.transfer.digests import BlockDigest, block_digest_of_chunks, digest_of_blocks
from tests.fakes.hypervisor import FakeHypervisor

MIB = 1 << 20
UUID = "5d0e3c1a-2b7f-4e58-9f1d-6a4c2b8e7d11"
POOL = "evacuator"
VOLUME = "db-1.raw"
T0 = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)


@pytest.mark.parametrize(("precopied", "settled", "length", "expected"), [
    pytest.param(10 * MIB, 0, 10 * MIB, [], id="off_before_the_first_read"),
    pytest.param(10 * MIB, 10 * MIB, 10 * MIB, [(0, 10 * MIB)], id="never_off_during_it"),
    pytest.param(10 * MIB, 3 * MIB + 5, 10 * MIB, [(0, 4 * MIB)], id="to_the_block_the_vm_went_off_in"),
    pytest.param(10 * MIB + 7, 10 * MIB + 7, 10 * MIB + 7, [(0, 10 * MIB + 7)], id="a_short_last_block"),
    pytest.param(10 * MIB + 7, 0, 12 * MIB, [(10 * MIB, 12 * MIB)], id="growth_from_its_last_block"),
    pytest.param(4 * MIB + 10, 3 * MIB + 1, 6 * MIB, [(0, 6 * MIB)], id="growth_next_to_the_prefix_merges"),
    pytest.param(4 * MIB, 3 * MIB, 6 * MIB, [(0, 3 * MIB), (4 * MIB, 6 * MIB)], id="a_settled_block_between"),
    pytest.param(8 * MIB, MIB, 9 * MIB, [(0, MIB), (8 * MIB, 9 * MIB)], id="prefix_and_growth_apart"),
])  # fmt: skip
def test_only_what_was_read_before_the_vm_was_off_or_added_since_is_read_again(
    precopied: int, settled: int, length: int, expected: list[tuple[int, int]]
) -> None:
    assert unsettled_ranges(precopied, settled, length) == expected


def _digests(content: bytes) -> list[bytes]:
    digest = BlockDigest(keep_blocks=True)
    digest.update(DataChunk(data=content))
    digest.hexdigest()
    assert digest.blocks is not None
    return digest.blocks


@pytest.mark.parametrize("seed", range(20))
def test_kept_block_digests_make_the_block_digest_whatever_the_chunking(seed: int) -> None:
    rng = random.Random(seed)
    chunks: list[Chunk] = []
    for _ in range(rng.randrange(1, 12)):
        size = rng.choice([1, 4096, MIB - 3, MIB, 2 * MIB + 11])
        hole = rng.random() < 0.4
        chunks.append(HoleChunk(length_bytes=size) if hole else DataChunk(data=rng.randbytes(size)))
    kept = BlockDigest(keep_blocks=True)
    for chunk in chunks:
        kept.update(chunk)
    whole = kept.hexdigest()
    assert kept.blocks is not None
    assert whole == digest_of_blocks(kept.blocks) == block_digest_of_chunks(chunks)


def test_changed_blocks_yields_the_blocks_that_differ_and_what_grew_and_updates_the_digests() -> None:
    before = random.Random(1).randbytes(4 * MIB + 100)
    after = bytearray(before) + random.Random(2).randbytes(MIB)  # grew by a MiB
    after[MIB + 5] ^= 0xFF  # one byte of block 1
    after[3 * MIB : 4 * MIB] = bytes(MIB)  # block 3 discarded: zeros (a hole, when re-read)
    digests = _digests(before)
    chunks: list[Chunk] = [DataChunk(data=bytes(after[:3 * MIB])), HoleChunk(length_bytes=MIB),
                           DataChunk(data=bytes(after[4 * MIB:]))]

    patches = list(changed_blocks(digests, 0, chunks))

    assert [offset for offset, _ in patches] == [MIB, 3 * MIB, 4 * MIB, 5 * MIB]
    assert all(data == after[offset : offset + len(data)] for offset, data in patches)
    assert digests == _digests(bytes(after))


# --- the migrator, with a pre-copy, over in-memory hosts ---------------------------------------------------


@dataclass
class TickingClock:
    """Advances a little at every look, as real time does while bytes are copied."""

    now: datetime = T0
    tick: timedelta = timedelta(milliseconds=1)
    slept_seconds: list[float] = field(default_factory=list)

    def __call__(self) -> datetime:
        self.now += self.tick
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept_seconds.append(seconds)
        self.now += timedelta(seconds=seconds)


@dataclass
class World:
    source: FakeHypervisor
    destination: FakeHypervisor
    clock: TickingClock
    events: list[StepEvent] = field(default_factory=list)
    slots_taken: list[str] = field(default_factory=list)
    precopy_free: bool = True

    def migrator(
        self, *, timeout_seconds: float = 30.0, on_step: Callable[[StepEvent], None] | None = None
    ) -> ColdMigrator:
        @contextmanager
        def transfer_slot(vm_uuid: str) -> Iterator[None]:
            self.slots_taken.append(vm_uuid)
            yield

        return ColdMigrator(
            source=self.source, destination=self.destination, clock=self.clock,
            shutdown_timeout_seconds=timeout_seconds, sleep=self.clock.sleep,
            on_step=on_step or self.events.append,
            poll_interval_seconds=0.5, transfer_slot=transfer_slot,
            precopy_slot=lambda vm_uuid: nullcontext(self.precopy_free),
        )  # fmt: skip

    def content(self) -> bytes:
        return self.source.volume_bytes(POOL, VOLUME)


def make_world(data_bytes: int = 6 * MIB, capacity_bytes: int = 8 * MIB) -> World:
    source = FakeHypervisor(name="host-a")
    source.add_volume(POOL, VOLUME, capacity_bytes=capacity_bytes,
                      data=random.Random(7).randbytes(data_bytes))
    source.add_vm(domain_xml(name="db-1", pool=POOL, volume=VOLUME, mac="52:54:00:aa:00:01",
                             facts=VmFacts(tenant="acme"), uuid=UUID), state=VmState.RUNNING)
    return World(source=source, destination=FakeHypervisor(name="host-b"), clock=TickingClock())


def _move(world: World, **kwargs: float) -> tuple[MoveReport, list[dict[str, object]]]:
    with capture_logs() as logs:
        report = world.migrator(**kwargs).move(UUID)
    moved = world.destination.peek_vm(UUID)
    assert moved is not None and moved.state is VmState.RUNNING and world.source.peek_vm(UUID) is None
    return report, [dict(e) for e in logs]


def _event(logs: list[dict[str, object]], name: str) -> dict[str, object]:
    found = [e for e in logs if e["event"] == name]
    assert len(found) == 1, f"{name}: {found}"
    return found[0]


def test_a_block_the_guest_writes_after_it_was_copied_is_copied_again_and_nothing_else() -> None:
    world = make_world()
    original = world.content()

    def guest(offset: int) -> None:  # while the pre-copy reads block 3, the guest rewrites a byte of block 0
        if offset == 3 * MIB:
            world.source.guest_write(POOL, VOLUME, 10, b"\xee")

    world.source.before_live_read = guest
    report, logs = _move(world)

    final = world.content() if world.source.volume_names() else None
    assert final is None, "the source disk is removed once the move is done"
    copy = world.destination.volume_bytes(POOL, VOLUME)
    assert copy[10:11] == b"\xee" and copy[:10] + copy[11:] == original[:10] + original[11:]
    finished = _event(logs, "precopy_finished")
    assert finished["patched_bytes"] == MIB, "block 0 alone changed"
    assert report.bytes_copied == 6 * MIB + MIB
    assert f"write_volume {POOL} {VOLUME}" in world.destination.calls
    assert world.destination.calls.count(f"write_volume {POOL} {VOLUME}") == 1, "no second full copy"


def test_a_guest_that_goes_off_mid_copy_has_only_the_part_read_before_read_again() -> None:
    world = make_world()

    def guest(offset: int) -> None:
        if offset == 2 * MIB + 4096:  # it shuts down while block 2 is read
            world.source.destroy_vm(UUID)

    world.source.before_live_read = guest
    report, logs = _move(world)

    assert not report.forced_off and world.source.calls.count(f"destroy_vm {UUID}") == 1, "it went off itself"
    reread = _event(logs, "precopy_finished")["reread_bytes"]
    assert isinstance(reread, int) and 3 * MIB <= reread < 8 * MIB, "up to the block it went off in, not all"
    assert world.slots_taken == [], "the pre-copy's slot went on to the last blocks and their verification"
    assert world.clock.slept_seconds == [], "nothing left to wait for"


def test_a_guest_deaf_to_acpi_is_powered_off_at_the_deadline_during_the_pre_copy() -> None:
    world = make_world()
    report, logs = _move(world, timeout_seconds=1.0)

    assert report.forced_off
    forced = [e for e in logs if e["event"] == "vm_forced_off"]
    assert forced and forced[0].get("during") == "precopy"
    assert world.clock.slept_seconds == []


def test_without_a_free_slot_the_disks_wait_for_the_vm_to_be_off() -> None:
    world = make_world()
    world.precopy_free = False
    report, logs = _move(world, timeout_seconds=1.0)

    assert f"read_volume_live {POOL} {VOLUME}" not in world.source.calls
    assert not [e for e in logs if e["event"] == "precopy_finished"]
    assert world.slots_taken == [UUID]
    assert report.forced_off


def test_a_failed_pre_copy_costs_only_itself() -> None:
    world = make_world()
    world.destination.inject_error("write_volume", HypervisorError("host-b: connection reset"))
    report, logs = _move(world)

    assert _event(logs, "precopy_abandoned")["error"] == "host-b: connection reset"
    assert world.destination.calls.count(f"write_volume {POOL} {VOLUME}") == 2, "copied afresh once off"
    assert report.bytes_copied == 6 * MIB


def test_a_source_file_replaced_after_the_pre_copy_is_copied_afresh() -> None:
    world = make_world()
    replaced = random.Random(9).randbytes(6 * MIB)

    def swap(event: StepEvent) -> None:  # another file now holds the volume: the pre-copy is not of it
        if (event.step, event.phase) == (MoveStep.QUIESCE, StepPhase.FINISHED):
            world.source.delete_volume(POOL, VOLUME)
            world.source.add_volume(POOL, VOLUME, capacity_bytes=8 * MIB, data=replaced)

    with capture_logs() as logs:
        world.migrator(on_step=swap).move(UUID)

    assert any(e["event"] == "precopy_unusable" for e in logs)
    assert world.destination.volume_bytes(POOL, VOLUME) == replaced + bytes(2 * MIB)
    assert world.destination.calls.count(f"write_volume {POOL} {VOLUME}") == 2


def test_a_file_that_grew_during_the_pre_copy_is_copied_to_its_new_end() -> None:
    world = make_world(data_bytes=3 * MIB, capacity_bytes=3 * MIB + 100)  # a qcow2-like file, growing
    extra = random.Random(3).randbytes(MIB + 17)

    def guest(offset: int) -> None:
        if offset == MIB:
            world.source.guest_write(POOL, VOLUME, 3 * MIB + 100, extra)

    world.source.before_live_read = guest
    with capture_logs() as logs:
        world.migrator().move(UUID)

    expected = random.Random(7).randbytes(3 * MIB) + bytes(100) + extra
    assert world.destination.volume_bytes(POOL, VOLUME) == expected
    assert _event([dict(e) for e in logs], "precopy_finished")["patched_bytes"] == len(expected) - 3 * MIB


def test_a_failed_patch_fails_the_copy_and_the_retry_copies_afresh() -> None:
    world = make_world()

    def guest(offset: int) -> None:
        if offset == 5 * MIB:
            world.source.guest_write(POOL, VOLUME, 2 * MIB, b"late")

    world.source.before_live_read = guest
    expected = bytearray(world.content())
    expected[2 * MIB : 2 * MIB + 4] = b"late"
    world.destination.inject_error("patch_volume", HypervisorError("host-b: write failed"))
    with pytest.raises(MigrationError, match="copy_disks failed: host-b: write failed"):
        world.migrator().move(UUID)
    retried = world.migrator().move(UUID, start_on_destination=True)
    assert retried.running_on_destination and world.destination.volume_bytes(POOL, VOLUME) == bytes(expected)
    assert world.destination.calls.count(f"write_volume {POOL} {VOLUME}") == 2


class _DroppingPatches(FakeHypervisor):
    """A destination that says it wrote the patches and did not."""

    def patch_volume(self, pool: str, volume: str, patches: Iterable[tuple[int, bytes]]) -> int:
        return sum(len(data) for _offset, data in patches)


def test_patches_the_destination_did_not_store_fail_the_disks_verification() -> None:
    world = make_world()
    world.destination = _DroppingPatches(name="host-b")

    def guest(offset: int) -> None:
        if offset == 4 * MIB:
            world.source.guest_write(POOL, VOLUME, 0, b"new")

    world.source.before_live_read = guest
    with pytest.raises(MigrationError, match=r"verify_disks failed: .* differs after copy"):
        world.migrator().move(UUID)
    assert world.destination.peek_vm(UUID) is None, "never defined on a copy that failed its verification"
