"""The Hypervisor protocol over one libvirt connection; libvirt errors become HypervisorError here."""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any
from xml.etree import ElementTree

import libvirt

from evacuator.errors import HypervisorError
from evacuator.hypervisor.libvirt.connect import connect_libvirt
from evacuator.hypervisor.libvirt.metadata import write_origin, write_window
from evacuator.hypervisor.libvirt.storage import LibvirtStorage
from evacuator.hypervisor.model import (
    Hypervisor,
    PeerDigests,
    VmInfo,
    VmState,
    VolumeSender,
    parse_definition,
)
from evacuator.hypervisor.origin import Origin

_STATES = {
    libvirt.VIR_DOMAIN_RUNNING: VmState.RUNNING,
    libvirt.VIR_DOMAIN_SHUTOFF: VmState.SHUT_OFF,
    libvirt.VIR_DOMAIN_PAUSED: VmState.PAUSED,
}


def open_libvirt_host(
    name: str, uri: str, pool: str, *, keepalive_interval_seconds: int = 5, keepalive_count: int = 3,
    open_timeout_seconds: float = 60.0, local_files: bool = False, peer_digests: PeerDigests | None = None,
    volume_sender: VolumeSender | None = None,
) -> LibvirtHost:
    """Opens a read-write connection to one host (see connect_libvirt); `pool` is where this host keeps
    evacuator-managed disks. `local_files`: this is the host the process runs on, so a volume libvirt keeps
    in a local file may be read from that file (checked against libvirt's view first) instead of through a
    libvirt download. `peer_digests`: how to ask another host's own daemon for a digest of its volume;
    `volume_sender`: how to write a volume through that daemon (its data channel)."""
    connection = connect_libvirt(name, uri, keepalive_interval_seconds=keepalive_interval_seconds,
                                 keepalive_count=keepalive_count, open_timeout_seconds=open_timeout_seconds)
    return LibvirtHost(name=name, uri=uri, pool=pool, connection=connection, local_files=local_files,
                       peer_digests=peer_digests, volume_sender=volume_sender)


class LibvirtHost(LibvirtStorage):
    """One hypervisor host reached through libvirt; owns its connection. One mover uses it at a time (a
    copy reads the source on a prefetch thread while it writes the destination: libvirt connections are
    thread-safe). Its volumes: LibvirtStorage."""

    @property
    def name(self) -> str:
        return self._name

    @property
    def uri(self) -> str:
        return self._uri

    @property
    def pool(self) -> str:
        return self._pool

    def close(self) -> None:
        with self._mapped("close"):
            self._conn.close()

    def __enter__(self) -> LibvirtHost:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def list_vms(self) -> tuple[VmInfo, ...]:
        with self._mapped("list_vms"):
            domains = self._conn.listAllDomains(0)
            return tuple(sorted((self._info(dom) for dom in domains), key=lambda vm: vm.name))

    def find_vm(self, uuid: str) -> VmInfo | None:
        with self._mapped("find_vm", vm_uuid=uuid):
            dom = self._lookup(uuid)
            return None if dom is None else self._info(dom)

    def vm_definition_xml(self, uuid: str) -> str:
        with self._mapped("vm_definition_xml", vm_uuid=uuid):
            return str(self._domain(uuid).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))

    def define_vm(self, definition_xml: str) -> VmInfo:
        with self._mapped("define_vm"):
            return self._info(self._conn.defineXMLFlags(definition_xml, libvirt.VIR_DOMAIN_DEFINE_VALIDATE))

    def start_vm(self, uuid: str) -> None:
        with self._mapped("start_vm", vm_uuid=uuid):
            self._domain(uuid).create()

    def request_shutdown(self, uuid: str) -> None:
        with self._mapped("request_shutdown", vm_uuid=uuid):
            self._domain(uuid).shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)

    def destroy_vm(self, uuid: str) -> None:
        with self._mapped("destroy_vm", vm_uuid=uuid):
            self._domain(uuid).destroy()

    def undefine_vm(self, uuid: str) -> None:
        with self._mapped("undefine_vm", vm_uuid=uuid):
            self._domain(uuid).undefineFlags(0)

    def store_window(self, vm_uuid: str, window_seconds: int) -> None:
        """Keeps a tenant-registered window in the VM's definition (and the running VM's, if it runs)."""
        with self._mapped("store_window", vm_uuid=vm_uuid):
            write_window(self._domain(vm_uuid), vm_uuid, window_seconds)

    def set_origin(self, uuid: str, origin: Origin | None) -> None:
        with self._mapped("set_origin", vm_uuid=uuid):
            write_origin(self._domain(uuid), origin)

    def disk_files(self) -> frozenset[Path]:
        """Every file any defined VM names as a disk or in a disk's backing chain, running or persistent."""
        with self._mapped("disk_files"):
            files = set()
            for dom in self._conn.listAllDomains(0):
                for flags in (0, libvirt.VIR_DOMAIN_XML_INACTIVE):
                    root = ElementTree.fromstring(dom.XMLDesc(flags))
                    files |= {Path(s.get("file", "")) for s in root.iterfind("./devices/disk//source[@file]")}
            return frozenset(files)

    def migrate_live(self, uuid: str, destination: Hypervisor) -> None:
        if not isinstance(destination, LibvirtHost):
            raise HypervisorError(f"host {self._name}: live migration needs a libvirt destination")
        # Copy-storage migration: the destination pre-creates the volumes and QEMU streams them while the
        # guest runs. The peer is reached by its hostname (RECIPES: a migration_address breaks QEMU).
        flags = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_NON_SHARED_DISK
                 | libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE)
        with self._mapped("migrate_live", vm_uuid=uuid, destination=destination.name):
            self._domain(uuid).migrate3(destination._conn, {}, flags)

    def _info(self, dom: Any) -> VmInfo:
        definition = parse_definition(dom.XMLDesc(0))
        state_code, _reason = dom.state()
        return VmInfo(
            uuid=definition.uuid,
            name=definition.name,
            state=_STATES.get(state_code, VmState.OTHER),
            macs=definition.macs,
            volumes=definition.volumes,
            facts=definition.facts,
            origin=definition.origin,
        )

    def _lookup(self, uuid: str) -> Any | None:
        try:
            return self._conn.lookupByUUIDString(uuid)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise

    def _domain(self, uuid: str) -> Any:
        dom = self._lookup(uuid)
        if dom is None:
            raise HypervisorError(f"host {self._name}: no VM with uuid {uuid}")
        return dom


