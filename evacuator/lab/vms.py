"""Creates small test-and-demo VMs on lab hosts: no OS, one sparse raw disk holding known bytes, user NIC."""

from __future__ import annotations

from xml.sax.saxutils import escape, quoteattr

from evacuator.errors import LabError
from evacuator.hypervisor.facts import VmFacts, render_facts
from evacuator.hypervisor.libvirt.host import open_libvirt_host
from evacuator.transfer.chunks import Chunk, DataChunk, HoleChunk
from evacuator.transfer.digests import sha256_of_chunks

MEMORY_MIB = 64
_WRITE_CHUNK_BYTES = 1 << 20


def volume_name(vm_name: str) -> str:
    """The name of a lab VM's single disk volume."""
    return f"{vm_name}.raw"


def domain_xml(
    *, name: str, pool: str, volume: str, mac: str, facts: VmFacts, uuid: str | None = None,
    extra_devices: str = "",
) -> str:
    """A QEMU (software emulated) domain with no OS to boot: SeaBIOS idles and ignores ACPI shutdown.

    Without `uuid` libvirt picks one at define time."""
    uuid_element = "" if uuid is None else f"<uuid>{escape(uuid)}</uuid>"
    return f"""<domain type='qemu'>
  <name>{escape(name)}</name>{uuid_element}
  <memory unit='MiB'>{MEMORY_MIB}</memory>
  <vcpu>1</vcpu>
  <metadata>{render_facts(facts)}</metadata>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <disk type='volume' device='disk'>
      <driver name='qemu' type='raw'/>
      <source pool={quoteattr(pool)} volume={quoteattr(volume)}/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='user'><mac address={quoteattr(mac)}/><model type='virtio'/></interface>
    <memballoon model='none'/>{extra_devices}
  </devices>
</domain>"""


def create_vm(
    conn_uri: str,
    pool: str,
    *,
    name: str,
    tenant: str | None,
    window_seconds: int | None,
    disk_bytes: int,
    data: bytes,
    mac: str,
    start: bool = True,
    extra_devices: str = "",
    facts: VmFacts | None = None,
) -> str:
    """Defines (and by default starts) a lab VM whose disk holds `data` at offset 0; returns its UUID.
    `facts`, when given, replaces the ones built from `tenant` and `window_seconds`."""
    if len(data) > disk_bytes:
        raise LabError(f"VM {name}: {len(data)} bytes of data do not fit a {disk_bytes}-byte disk")
    volume = volume_name(name)
    host = open_libvirt_host(name=conn_uri, uri=conn_uri, pool=pool)
    with host:
        host.create_volume(pool, volume, capacity_bytes=disk_bytes)
        chunks: list[Chunk] = [
            DataChunk(data=data[offset : offset + _WRITE_CHUNK_BYTES])
            for offset in range(0, len(data), _WRITE_CHUNK_BYTES)
        ]
        if disk_bytes > len(data):
            chunks.append(HoleChunk(length_bytes=disk_bytes - len(data)))
        host.write_volume(pool, volume, chunks)
        if facts is None:
            facts = VmFacts(tenant=tenant, window_seconds=window_seconds)
        vm = host.define_vm(domain_xml(name=name, pool=pool, volume=volume, mac=mac, facts=facts,
                                       extra_devices=extra_devices))
        if start:
            host.start_vm(vm.uuid)
        return vm.uuid


def sha256_of_volume(uri: str, pool: str, volume: str) -> str:
    """The sha256 of a volume's whole content (capacity bytes, holes as zeros), downloaded over a stream."""
    with open_libvirt_host(name=uri, uri=uri, pool=pool) as host:
        return sha256_of_chunks(host.read_volume(pool, volume))
