"""Integration, all real: a running VM's disk pre-copied while it shuts down, with writes the pre-copy must
catch, on two lab libvirt hosts (its copy through host-b's daemon, or through libvirt)."""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from pathlib import Path

import libvirt
import pytest
from structlog.testing import capture_logs

from evacuator.hypervisor.facts import VmFacts
from evacuator.hypervisor.libvirt.host import LibvirtHost, open_libvirt_host
from evacuator.hypervisor.model import VmState
from evacuator.lab.hosts import LabHost
from evacuator.lab.peer import host_daemon
from evacuator.lab.vms import domain_xml, sha256_of_volume
from evacuator.migrate.cold import ColdMigrator
from evacuator.migrate.steps import MoveStep, StepEvent, StepPhase
from evacuator.peers.rpc import PeerClient
from evacuator.transfer.chunks import Chunk, DataChunk, HoleChunk
from evacuator.transfer.sender import DataChannelClient
from notifiers.connection import blocking_connection_factory
from notifiers.settings import BrokerSettings
from tests.fixtures.broker import lab_trust

pytestmark = pytest.mark.integration

MIB = 1 << 20
DISK_BYTES = 192 * MIB
VOLUME = "busy.raw"


def _running_vm(host: LabHost, data: bytes) -> str:
    path = host.pool_path / VOLUME
    with path.open("wb") as out:
        out.write(data)
        out.truncate(DISK_BYTES)
    conn = libvirt.open(host.uri)
    try:
        conn.storagePoolLookupByName(host.pool).refresh(0)
        dom = conn.defineXML(domain_xml(name="busy", pool=host.pool, volume=VOLUME, mac="52:54:00:b5:00:01",
                                        facts=VmFacts(tenant="acme")))
        dom.create()
        return str(dom.UUIDString())
    finally:
        conn.close()


@contextmanager
def _destination(host: LabHost, broker_settings: BrokerSettings, through: str) -> Iterator[LibvirtHost]:
    if through == "libvirt":
        with open_libvirt_host(host.name, host.uri, host.pool) as opened:
            yield opened
        return
    asker = PeerClient(blocking_connection_factory(broker_settings, connection_name="test-precopy"),
                       trust=lab_trust(broker_settings), exchange=broker_settings.peers_exchange,
                       timeout_base_seconds=30, min_bytes_per_second=10 * MIB)
    sender = DataChannelClient(asker, encryption="none")
    with host_daemon(host, broker_url=broker_settings.url.get_secret_value(),
                     exchange=broker_settings.peers_exchange), \
            open_libvirt_host(host.name, host.uri, host.pool, peer_digests=asker,
                              volume_sender=sender) as opened:  # fmt: skip
        yield opened
    assert sender.sent_volumes == 1, "the pre-copy went through host-b's daemon"


class _Guest:
    """Writes into the source disk's file as the running guest would: once the pre-copy is under way, into
    blocks it has already read; never after the VM is off."""

    def __init__(self, source_file: Path, copy_file: Path) -> None:
        self._source_file = source_file
        self._copy_file = copy_file
        self.writes: dict[int, bytes] = {}
        self._thread = threading.Thread(target=self._run, daemon=True)

    def on_step(self, event: StepEvent) -> None:
        if (event.step, event.phase) == (MoveStep.QUIESCE, StepPhase.STARTED):
            self._thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not (
                self._copy_file.exists() and self._copy_file.stat().st_blocks * 512 >= 32 * MIB):
            time.sleep(0.001)  # the copy has written 32 MiB, in order: those blocks were read already
        rng = random.Random(5)
        with self._source_file.open("r+b") as disk:
            for offset in (0, 5 * MIB + 77, 17 * MIB):
                data = rng.randbytes(4096)
                os.pwrite(disk.fileno(), data, offset)
                self.writes[offset] = data
            os.fsync(disk.fileno())

    def join(self) -> None:
        self._thread.join(10)


@pytest.mark.parametrize("through", ["data_channel", "libvirt"])
def test_writes_during_the_pre_copy_reach_the_destination_and_only_changed_blocks_travel_again(
    clean_lab_hosts: tuple[LabHost, ...], broker_settings: BrokerSettings, through: str,
) -> None:
    host_a, host_b = clean_lab_hosts
    data = bytearray(random.Random(11).randbytes(64 * MIB))
    uuid = _running_vm(host_a, bytes(data))
    guest = _Guest(host_a.pool_path / VOLUME, host_b.pool_path / VOLUME)
    with capture_logs() as logs, _destination(host_b, broker_settings, through) as b, \
            open_libvirt_host("host-a", host_a.uri, host_a.pool, local_files=True) as a:  # fmt: skip
        migrator = ColdMigrator(source=a, destination=b, clock=lambda: datetime.now(UTC),
                                shutdown_timeout_seconds=3.0, sleep=time.sleep, on_step=guest.on_step,
                                poll_interval_seconds=0.1, precopy_slot=lambda _: nullcontext(True))
        report = migrator.move(uuid)
        moved = b.find_vm(uuid)
    guest.join()
    assert guest.writes, "the guest wrote during the move"
    for offset, written in guest.writes.items():
        data[offset : offset + len(written)] = written
    expected = hashlib.sha256(bytes(data) + bytes(DISK_BYTES - len(data))).hexdigest()
    assert moved is not None and moved.state is VmState.RUNNING
    assert sha256_of_volume(host_b.uri, host_b.pool, VOLUME) == expected
    finished = [e for e in logs if e["event"] == "precopy_finished"]
    assert len(finished) == 1, [e["event"] for e in logs]
    # The three written blocks (5 MiB + 77 spans one), not the whole disk, were written again.
    assert 3 * MIB <= finished[0]["patched_bytes"] <= 4 * MIB
    assert report.forced_off, "the lab's guest ignores ACPI: powered off at the deadline"
    assert not (host_a.pool_path / VOLUME).exists() and a_vm_count(host_a) == 0


def _paced(write: Callable[[str, str, Iterable[Chunk]], int]) -> Callable[[str, str, Iterable[Chunk]], int]:
    """`write`, taking each chunk 10 ms after the one before."""

    def paced(pool: str, volume: str, chunks: Iterable[Chunk]) -> int:
        def slowly() -> Iterator[Chunk]:
            for chunk in chunks:
                time.sleep(0.01)
                yield chunk

        return write(pool, volume, slowly())

    return paced


def a_vm_count(host: LabHost) -> int:
    conn = libvirt.open(host.uri)
    try:
        return len(conn.listAllDomains(0))
    finally:
        conn.close()


def test_a_guest_powered_off_mid_pre_copy_has_only_the_part_read_before_read_again(
    clean_lab_hosts: tuple[LabHost, ...],
) -> None:
    host_a, host_b = clean_lab_hosts
    data = random.Random(12).randbytes(DISK_BYTES)
    uuid = _running_vm(host_a, data)
    with capture_logs() as logs, open_libvirt_host("host-b", host_b.uri, host_b.pool) as b, \
            open_libvirt_host("host-a", host_a.uri, host_a.pool, local_files=True) as a:  # fmt: skip
        # Paced to about 2 s, so the pre-copy outlasts the 0.2 s shutdown whatever the machine's speed: an
        # idle one uploads the 192 MiB before the deadline, and then no read begins after the VM is off.
        b.write_volume = _paced(b.write_volume)  # type: ignore[method-assign]
        migrator = ColdMigrator(source=a, destination=b, clock=lambda: datetime.now(UTC),
                                shutdown_timeout_seconds=0.2, sleep=time.sleep, on_step=lambda e: None,
                                poll_interval_seconds=0.05, precopy_slot=lambda _: nullcontext(True))
        report = migrator.move(uuid)
    assert report.forced_off
    assert [e.get("during") for e in logs if e["event"] == "vm_forced_off"] == ["precopy"]
    reread = next(e["reread_bytes"] for e in logs if e["event"] == "precopy_finished")
    assert 0 < reread < DISK_BYTES, "what was read after the VM was off is final: not read again"
    assert sha256_of_volume(host_b.uri, host_b.pool, VOLUME) == hashlib.sha256(data).hexdigest()


def test_libvirt_host_reads_ranges_patches_and_names_the_file_it_reads(
    clean_lab_hosts: tuple[LabHost, ...],
) -> None:
    host_a, _ = clean_lab_hosts
    data = random.Random(13).randbytes(3 * MIB)
    with open_libvirt_host("host-a", host_a.uri, host_a.pool, local_files=True) as local, \
            open_libvirt_host("host-a", host_a.uri, host_a.pool) as remote:  # fmt: skip
        local.create_volume(host_a.pool, "r.raw", capacity_bytes=8 * MIB)
        local.write_volume(host_a.pool, "r.raw", [DataChunk(data=data), HoleChunk(length_bytes=5 * MIB)])
        live = local.read_volume_live(host_a.pool, "r.raw")
        stored = local.stored_file(host_a.pool, "r.raw")
        assert live is not None and stored is not None
        assert live.identity == stored.identity and stored.length_bytes == 8 * MIB
        assert b"".join(c.data for c in live.chunks if isinstance(c, DataChunk))[: len(data)] == data
        assert remote.read_volume_live(host_a.pool, "r.raw") is None and remote.stored_file(host_a.pool,
                                                                                            "r.raw") is None
        written = remote.patch_volume(host_a.pool, "r.raw", [(MIB, b"x" * 10), (6 * MIB, b"y" * MIB)])
        expected = bytearray(data + bytes(5 * MIB))
        expected[MIB : MIB + 10] = b"x" * 10
        expected[6 * MIB : 7 * MIB] = b"y" * MIB
        assert written == MIB + 10
        for host in (local, remote):  # the file read directly, and a libvirt download
            chunks = host.read_volume_range(host_a.pool, "r.raw", offset_bytes=MIB - 5, length_bytes=6 * MIB)
            content = b"".join(c.data if isinstance(c, DataChunk) else bytes(c.length_bytes) for c in chunks)
            assert content == expected[MIB - 5 : 7 * MIB - 5]
        with pytest.raises(Exception, match="ends"):
            list(local.read_volume_range(host_a.pool, "r.raw", offset_bytes=7 * MIB, length_bytes=2 * MIB))
