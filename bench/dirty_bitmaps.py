"""The two exact ways to find the blocks a running guest changed, side by side on one qcow2 v3 disk: block
digests (the pre-copy's way: read the whole file again, XXH3 per 1 MiB block) and a libvirt checkpoint's dirty
bitmap (QEMU tracks the guest's writes; read out once the guest is off with qemu-nbd and nbdinfo).

The guest's writes go through QEMU here (HMP `qemu-io`, the lab guests run no OS), since a bitmap sees nothing
else; and the disk is qcow2 v3, since libvirt refuses checkpoints on raw disks and QEMU can keep no
persistent bitmap in qcow2 v2 (bench_downtime.py probes both).
"""

from __future__ import annotations

import json
import random
import subprocess
import tempfile
import time
from pathlib import Path

import libvirt
import libvirt_qemu  # type: ignore[import-untyped]

from bench.lab_vms import MIB, define_vm, write_file
from evacuator.hypervisor.facts import VmFacts
from evacuator.lab.hosts import LabHost
from evacuator.lab.vms import domain_xml
from evacuator.transfer.digests import block_digest

_DEVICE = "/machine/peripheral/virtio-disk0/virtio-backend"
_CHECKPOINT = ("<domaincheckpoint><name>window</name><disks><disk name='vda' checkpoint='bitmap'/></disks>"
               "</domaincheckpoint>")  # fmt: skip


def probe_checkpoints(host: LabHost) -> str:
    """What this machine's libvirt says to a checkpoint (a persistent dirty bitmap) on a running raw disk and
    on a running qcow2 one: the cheaper way to find changed blocks, where it applies."""
    answers = []
    conn = libvirt.open(host.uri)
    try:
        for fmt in ("raw", "qcow2"):
            name = f"probe-{fmt}"
            if fmt == "raw":
                uuid = define_vm(host, name, MIB, 64 * MIB, start=True)
            else:
                pool = conn.storagePoolLookupByName(host.pool)
                pool.createXML(f"<volume><name>{name}.qcow2</name><capacity unit='bytes'>{64 * MIB}"
                               "</capacity><target><format type='qcow2'/></target></volume>", 0)  # fmt: skip
                xml = conn.lookupByUUIDString(define_vm(host, "probe-tmp", MIB, MIB, start=False)).XMLDesc(0)
                conn.lookupByName("probe-tmp").undefine()
                xml = (xml.replace("probe-tmp.raw", f"{name}.qcow2").replace("type='raw'", "type='qcow2'")
                       .replace("<name>probe-tmp</name>", f"<name>{name}</name>"))
                xml = "\n".join(line for line in xml.splitlines() if "<uuid>" not in line)
                domain = conn.defineXML(xml)
                domain.create()
                uuid = domain.UUIDString()
            domain = conn.lookupByUUIDString(uuid)
            try:
                domain.checkpointCreateXML("<domaincheckpoint><name>probe</name><disks><disk name='vda' "
                                           "checkpoint='bitmap'/></disks></domaincheckpoint>", 0)
                answers.append(f"{fmt}: checkpoint created")
                domain.checkpointLookupByName("probe").delete(0)
            except libvirt.libvirtError as exc:
                answers.append(f"{fmt}: refused ({exc.get_error_message()})")
            domain.destroy()
            domain.undefine()
    finally:
        conn.close()
    return "; ".join(answers)


def _file_digests(path: Path) -> list[bytes]:
    with path.open("rb") as disk:
        return [block_digest(block) for block in iter(lambda: disk.read(MIB), b"")]


def _qcow2_vm(conn: libvirt.virConnect, host: LabHost, disk_bytes: int) -> tuple[libvirt.virDomain, Path]:
    seed, path = host.pool_path / "bitmap-seed.raw", host.pool_path / "bitmap.qcow2"
    write_file(seed, disk_bytes, disk_bytes)
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-o", "compat=1.1", str(seed),
                    str(path)], check=True)  # fmt: skip
    seed.unlink()
    conn.storagePoolLookupByName(host.pool).refresh(0)
    xml = domain_xml(name="bitmap", pool=host.pool, volume=path.name, mac="52:54:00:be:ff:01",
                     facts=VmFacts(tenant="bench")).replace("type='raw'", "type='qcow2'")
    domain = conn.defineXML(xml)
    domain.create()
    return domain, path


def _dirty_bytes(path: Path) -> int:
    """The dirty bitmap's extents, read as a backup tool would: an NBD export of the image with the bitmap."""
    with tempfile.TemporaryDirectory() as scratch:
        socket = f"{scratch}/nbd.sock"
        server = subprocess.Popen(["qemu-nbd", "-r", "-f", "qcow2", "-B", "window", "-k", socket, "-t",
                                   str(path)])  # fmt: skip
        try:
            for _ in range(500):
                if Path(socket).exists():
                    break
                time.sleep(0.01)
            mapped = subprocess.run(["nbdinfo", "--json", "--map=qemu:dirty-bitmap:window",
                                     f"nbd+unix:///?socket={socket}"], check=True, capture_output=True,
                                    text=True).stdout  # fmt: skip
        finally:
            server.terminate()
            server.wait(10)
    return sum(e["length"] for e in json.loads(mapped) if e["type"] & 1)


def measure(host: LabHost, disk_bytes: int, fraction: float) -> str:
    conn = libvirt.open(host.uri)
    try:
        domain, path = _qcow2_vm(conn, host, disk_bytes)
        domain.checkpointCreateXML(_CHECKPOINT, 0)
        before = _file_digests(path)  # the pre-copy's last pass while the guest ran
        rng = random.Random(7)
        for block in rng.sample(range(disk_bytes // MIB), round(disk_bytes // MIB * fraction)):
            # The guest's own device (a qemu-io on the node would need write access the device holds).
            command = f'qemu-io -d {_DEVICE} "write -P {rng.randrange(1, 255)} {block * MIB} 1M"'
            answer = libvirt_qemu.qemuMonitorCommand(domain, command,
                                                     libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)
            if answer.strip():
                raise RuntimeError(f"qemu-io: {answer.strip()}")
        domain.destroy()  # QEMU stores the persistent bitmap in the image as it exits
        began = time.monotonic()
        after = _file_digests(path)
        changed = sum(1 for old, new in zip(before, after, strict=False) if old != new) + abs(
            len(after) - len(before))
        digest_seconds = time.monotonic() - began
        began = time.monotonic()
        dirty = _dirty_bytes(path)
        bitmap_seconds = time.monotonic() - began
        domain.checkpointLookupByName("window").delete(libvirt.VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY)
        domain.undefine()
    finally:
        conn.close()
    return (f"finding what changed on a {disk_bytes // MIB} MiB qcow2 v3 disk, {fraction:.0%} written "
            f"through QEMU: block digests {changed} MiB of the file in {digest_seconds:.2f} s (the whole "
            f"file read again); dirty bitmap {dirty // MIB} MiB of the guest's disk in "
            f"{bitmap_seconds:.2f} s")
