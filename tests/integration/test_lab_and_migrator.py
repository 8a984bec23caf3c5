"""Integration: lab hosts are independent, the fake keeps libvirt's contract, a running VM moves intact."""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from xml.etree import ElementTree

import libvirt
import pytest

from evacuator.errors import HypervisorError
from evacuator.hypervisor.facts import NAMESPACE_URI, VmFacts, parse_facts
from evacuator.hypervisor.libvirt.host import open_libvirt_host
from evacuator.hypervisor.model import Hypervisor, VmState, parse_definition
from evacuator.lab.hosts import LabHost, LabHosts
from evacuator.lab.vms import create_vm, domain_xml, sha256_of_volume, volume_name
from evacuator.migrate.cold import ColdMigrator
from evacuator.migrate.steps import MoveStep, StepEvent, StepPhase
from evacuator.transfer.chunks import Chunk, DataChunk, HoleChunk
from evacuator.transfer.digests import sha256_of_chunks
from tests.fakes.hypervisor import FakeHypervisor
from tests.fixtures.libvirt_lab import free_port_pair

pytestmark = pytest.mark.integration

MIB = 1 << 20
MAC = "52:54:00:ab:cd:01"


def test_lab_hosts_are_independent_hypervisors(clean_lab_hosts: tuple[LabHost, ...]) -> None:
    host_a, host_b = clean_lab_hosts
    uuid = create_vm(host_a.uri, host_a.pool, name="alone", tenant=None, window_seconds=None,
                     disk_bytes=MIB, data=b"x", mac=MAC, start=False)
    conn_a, conn_b = libvirt.open(host_a.uri), libvirt.open(host_b.uri)
    try:
        assert (conn_a.getHostname(), conn_b.getHostname()) == ("host-a", "host-b")
        assert _host_uuid(conn_a) != _host_uuid(conn_b)
        assert [dom.UUIDString() for dom in conn_a.listAllDomains(0)] == [uuid]
        assert conn_b.listAllDomains(0) == []
    finally:
        conn_a.close()
        conn_b.close()


def _host_uuid(conn: libvirt.virConnect) -> str:
    return ElementTree.fromstring(conn.getCapabilities()).findtext("./host/uuid") or ""


def test_running_vm_moves_to_other_host_with_identity_and_disk_intact(
    clean_lab_hosts: tuple[LabHost, ...],
) -> None:
    host_a, host_b = clean_lab_hosts
    data = random.Random(7).randbytes(MIB)
    uuid = create_vm(host_a.uri, host_a.pool, name="mover", tenant="acme", window_seconds=600,
                     disk_bytes=64 * MIB, data=data, mac=MAC)
    volume = volume_name("mover")
    expected_sha256 = hashlib.sha256(data + bytes(63 * MIB)).hexdigest()
    events: list[StepEvent] = []
    with open_libvirt_host("host-a", host_a.uri, host_a.pool) as source, \
            open_libvirt_host("host-b", host_b.uri, host_b.pool) as destination:
        migrator = ColdMigrator(
            source=source, destination=destination, clock=lambda: datetime.now(UTC),
            shutdown_timeout_seconds=1.0, sleep=time.sleep, on_step=events.append, poll_interval_seconds=0.2,
        )
        report = migrator.move(uuid)
        moved = destination.find_vm(uuid)
        copy = destination.find_volume(host_b.pool, volume)
        assert source.find_vm(uuid) is None
        assert source.find_volume(host_a.pool, volume) is None
        again = migrator.move(uuid)

    assert moved is not None and copy is not None
    assert (moved.name, moved.state, moved.macs) == ("mover", VmState.RUNNING, (MAC,))
    assert moved.facts == VmFacts(tenant="acme", window_seconds=600)
    assert copy.capacity_bytes == 64 * MIB and copy.allocation_bytes < 8 * MIB
    assert sha256_of_volume(host_b.uri, host_b.pool, volume) == expected_sha256
    assert report.forced_off and report.running_on_destination
    assert MIB <= report.bytes_copied < 8 * MIB
    assert [event.step for event in events if event.phase is StepPhase.FINISHED][:7] == list(MoveStep)
    assert [timing.step for timing in again.steps if not timing.skipped] == [MoveStep.VERIFY]
    conn_b = libvirt.open(host_b.uri)
    try:
        dom = conn_b.lookupByUUIDString(uuid)
        assert parse_facts(dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NAMESPACE_URI)) == moved.facts
    finally:
        conn_b.close()
    print("\nmove step seconds:", {timing.step.value: round(timing.seconds, 3) for timing in report.steps},
          "total", round(report.seconds, 3))


CONTRACT_UUID = "7c9e6679-7425-40de-944b-e07fc1f90ae7"


@pytest.fixture(params=["fake", "libvirt"])
def hypervisor(request: pytest.FixtureRequest) -> Iterator[Hypervisor]:
    """The same contract, held by the in-memory fake and by a real libvirt host."""
    if request.param == "fake":
        yield FakeHypervisor(name="host-a")
        return
    host_a, _ = request.getfixturevalue("clean_lab_hosts")
    with open_libvirt_host("host-a", host_a.uri, host_a.pool) as host:
        yield host


def test_fake_and_libvirt_host_keep_the_same_contract(hypervisor: Hypervisor) -> None:
    pool, volume = "evacuator", "contract.raw"
    assert hypervisor.find_vm(CONTRACT_UUID) is None and hypervisor.find_volume(pool, volume) is None
    created = hypervisor.create_volume(pool, volume, capacity_bytes=MIB)
    assert (created.capacity_bytes, created.allocation_bytes) == (MIB, 0)
    with pytest.raises(HypervisorError):
        hypervisor.create_volume(pool, volume, capacity_bytes=MIB)
    chunks: list[Chunk] = [DataChunk(data=b"\x01" * 8192), HoleChunk(length_bytes=MIB - 8192)]
    assert hypervisor.write_volume(pool, volume, chunks) == 8192
    assert sha256_of_chunks(hypervisor.read_volume(pool, volume)) == sha256_of_chunks(chunks)
    xml = domain_xml(name="contract", pool=pool, volume=volume, mac=MAC, facts=VmFacts(tenant="acme"),
                     uuid=CONTRACT_UUID)
    defined = hypervisor.define_vm(xml)
    assert (defined.uuid, defined.name, defined.state, defined.macs) == (
        CONTRACT_UUID, "contract", VmState.SHUT_OFF, (MAC,))
    assert parse_definition(hypervisor.vm_definition_xml(CONTRACT_UUID)).facts == VmFacts(tenant="acme")
    with pytest.raises(HypervisorError):
        hypervisor.destroy_vm(CONTRACT_UUID)
    hypervisor.start_vm(CONTRACT_UUID)
    hypervisor.request_shutdown(CONTRACT_UUID)  # a guest without an OS ignores it
    assert [vm.state for vm in hypervisor.list_vms()] == [VmState.RUNNING]
    hypervisor.destroy_vm(CONTRACT_UUID)
    hypervisor.undefine_vm(CONTRACT_UUID)
    hypervisor.delete_volume(pool, volume)
    assert hypervisor.list_vms() == () and hypervisor.find_volume(pool, volume) is None
    with pytest.raises(HypervisorError):
        hypervisor.start_vm(CONTRACT_UUID)


def test_stopping_a_lab_leaves_no_process_behind(tmp_path: Path) -> None:
    lab = LabHosts(tmp_path / "lab", names=("host-c",), base_port=free_port_pair())
    (host,) = lab.start()
    create_vm(host.uri, host.pool, name="leftover", tenant=None, window_seconds=None, disk_bytes=MIB,
              data=b"x", mac=MAC)
    assert _processes_mentioning(str(host.root)) and _processes_mentioning("guest=leftover")
    lab.stop()
    lab.stop()
    assert _processes_mentioning(str(host.root)) == []
    assert _processes_mentioning("guest=leftover") == []


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found
