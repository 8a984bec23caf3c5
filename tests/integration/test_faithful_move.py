"""Integration, all real: a moved VM keeps its whole definition (tunables too), and raw + qcow2 disks."""

from __future__ import annotations

import hashlib
import random
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from xml.etree import ElementTree

import libvirt
import pytest

from evacuator.hypervisor.facts import MoveMethod, VmFacts, render_facts
from evacuator.hypervisor.libvirt.host import open_libvirt_host
from evacuator.hypervisor.model import VmState
from evacuator.lab.hosts import LabHost
from evacuator.lab.peer import host_daemon
from evacuator.lab.vms import sha256_of_volume
from evacuator.migrate.cold import ColdMigrator
from evacuator.peers.rpc import PeerClient
from evacuator.transfer.chunks import DataChunk, HoleChunk
from evacuator.transfer.sender import DataChannelClient
from notifiers.connection import blocking_connection_factory
from notifiers.settings import BrokerSettings
from tests.fixtures.broker import lab_trust

pytestmark = pytest.mark.integration

MIB = 1 << 20
UUID = "5d3c1f0e-7b2a-4c8e-9f10-2a3b4c5d6e7f"
FACTS = VmFacts(tenant="acme", window_seconds=300, group="solo", boot_order=1, priority=7,
                method=MoveMethod.COLD)


def _domain(pool: str) -> str:
    return f"""<domain type='qemu'>
  <name>faithful</name><uuid>{UUID}</uuid>
  <memory unit='MiB'>64</memory><vcpu>2</vcpu>
  <metadata>{render_facts(FACTS)}</metadata>
  <cputune><shares>512</shares><period>100000</period><quota>50000</quota></cputune>
  <memtune><hard_limit unit='KiB'>262144</hard_limit><soft_limit unit='KiB'>131072</soft_limit></memtune>
  <blkiotune><weight>300</weight></blkiotune>
  <numatune><memory mode='strict' nodeset='0'/></numatune>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <disk type='volume' device='disk'><driver name='qemu' type='raw'/>
      <source pool='{pool}' volume='faithful.raw'/><target dev='vda' bus='virtio'/></disk>
    <disk type='volume' device='disk'><driver name='qemu' type='qcow2'/>
      <source pool='{pool}' volume='faithful.qcow2'/><target dev='vdb' bus='virtio'/></disk>
    <interface type='user'><mac address='52:54:00:fa:17:01'/><model type='virtio'/></interface>
    <interface type='user'><mac address='52:54:00:fa:17:02'/><model type='e1000'/></interface>
    <memballoon model='none'/>
  </devices>
</domain>"""


@contextmanager
def _destination_daemon(host: LabHost, broker_settings: BrokerSettings, *, on: bool,
                        ) -> Iterator[DataChannelClient | None]:
    """With `on`, host-b's daemon runs its data channel and the sender that writes through it is yielded."""
    if not on:
        yield None
        return
    asker = PeerClient(blocking_connection_factory(broker_settings, connection_name="test-faithful"),
                       trust=lab_trust(broker_settings), exchange=broker_settings.peers_exchange,
                       timeout_base_seconds=30, min_bytes_per_second=10 * MIB)
    with host_daemon(host, broker_url=broker_settings.url.get_secret_value(),
                     exchange=broker_settings.peers_exchange):
        yield DataChannelClient(asker, encryption="tls")


def _canonical(xml: str) -> str:
    root = ElementTree.fromstring(xml)
    for element in root.iter():
        element.text = (element.text or "").strip() or None
        element.tail = None
    return ElementTree.tostring(root, encoding="unicode")


@pytest.mark.parametrize("through", ["libvirt", "data_channel"])
def test_moved_vm_keeps_its_definition_and_both_disk_formats(
    tmp_path: Path, clean_lab_hosts: tuple[LabHost, ...], broker_settings: BrokerSettings, through: str,
) -> None:
    host_a, host_b = clean_lab_hosts
    data = random.Random(17).randbytes(2 * MIB)
    # A qcow2 disk with guest data written through QEMU's own block layer, as a guest would.
    qcow2 = host_a.pool_path / "faithful.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(qcow2), "32M"], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0xab 1M 3M", str(qcow2)], check=True,
                   capture_output=True)
    with open_libvirt_host("host-a", host_a.uri, host_a.pool) as a:
        conn = libvirt.open(host_a.uri)
        conn.storagePoolLookupByName(host_a.pool).refresh(0)
        conn.close()
        a.create_volume(host_a.pool, "faithful.raw", capacity_bytes=16 * MIB)
        a.write_volume(host_a.pool, "faithful.raw", [DataChunk(data=data), HoleChunk(length_bytes=14 * MIB)])
        a.define_vm(_domain(host_a.pool))
        before = a.vm_definition_xml(UUID)
    sums = {v: sha256_of_volume(host_a.uri, host_a.pool, v) for v in ("faithful.raw", "faithful.qcow2")}
    reference = tmp_path / "reference.qcow2"
    reference.write_bytes(qcow2.read_bytes())
    assert sums["faithful.raw"] == hashlib.sha256(data + bytes(14 * MIB)).hexdigest()

    with _destination_daemon(host_b, broker_settings, on=through == "data_channel") as sender, \
            open_libvirt_host("host-a", host_a.uri, host_a.pool) as a, \
            open_libvirt_host("host-b", host_b.uri, host_b.pool, volume_sender=sender) as b:  # fmt: skip
        migrator = ColdMigrator(source=a, destination=b, clock=lambda: datetime.now(UTC),
                                shutdown_timeout_seconds=0.3, sleep=time.sleep, on_step=lambda e: None)
        report = migrator.move(UUID)
        if sender is not None:
            assert sender.sent_volumes == 2  # both formats went through host-b's own daemon
        after = b.vm_definition_xml(UUID)
        moved = b.find_vm(UUID)
        copies = {v: b.find_volume(host_b.pool, v) for v in sums}
        assert a.find_vm(UUID) is None and a.list_vms() == ()
    assert moved is not None and moved.state is VmState.SHUT_OFF and moved.facts == FACTS
    assert _canonical(after) == _canonical(before), "the destination's inactive XML equals the source's"
    for tunable in ("cputune", "memtune", "blkiotune", "numatune"):
        assert ElementTree.fromstring(after).find(tunable) is not None, tunable
    assert copies["faithful.qcow2"] is not None and copies["faithful.qcow2"].format == "qcow2"
    assert copies["faithful.raw"] is not None and copies["faithful.raw"].format == "raw"
    for volume, digest in sums.items():
        assert sha256_of_volume(host_b.uri, host_b.pool, volume) == digest, volume
    # Sparse-aware: the raw disk's 2 MiB travel, not its 16; the qcow2 file's holes stay holes.
    assert report.bytes_copied < 10 * MIB
    # And QEMU reads the same guest-visible bytes from the copy.
    result = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", str(reference),
                             str(host_b.pool_path / "faithful.qcow2")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
