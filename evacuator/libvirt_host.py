"""The Hypervisor protocol over one libvirt connection; libvirt errors become HypervisorError here."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any
from xml.etree import ElementTree
from xml.sax.saxutils import escape, quoteattr

import libvirt
import structlog

from evacuator.chunk_digests import block_digest_of_chunks
from evacuator.errors import HypervisorError
from evacuator.hypervisor import (
    Chunk,
    Hypervisor,
    PeerDigests,
    VmInfo,
    VmState,
    VolumeInfo,
    VolumeSender,
    parse_definition,
)
from evacuator.libvirt_open import connect_libvirt
from evacuator.libvirt_volumes import download_chunks, seen_file, upload_chunks
from evacuator.volume_io import file_chunks, flush_file

log = structlog.get_logger(__name__)

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


class LibvirtHost:
    """One hypervisor host reached through libvirt; owns its connection. One mover uses it at a time (a
    copy reads the source on a prefetch thread while it writes the destination: libvirt connections are
    thread-safe)."""

    def __init__(
        self, *, name: str, uri: str, pool: str, connection: Any, local_files: bool = False,
        peer_digests: PeerDigests | None = None, volume_sender: VolumeSender | None = None,
    ) -> None:
        self._volume_sender = volume_sender
        self._local_files = local_files
        self._peer_digests = peer_digests
        self._name = name
        self._uri = uri
        self._pool = pool
        self._conn = connection

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

    def disk_files(self) -> frozenset[Path]:
        """Every file any defined VM names as a disk or in a disk's backing chain, running or persistent."""
        with self._mapped("disk_files"):
            files = set()
            for dom in self._conn.listAllDomains(0):
                for flags in (0, libvirt.VIR_DOMAIN_XML_INACTIVE):
                    root = ElementTree.fromstring(dom.XMLDesc(flags))
                    files |= {Path(s.get("file", "")) for s in root.iterfind("./devices/disk//source[@file]")}
            return frozenset(files)

    def find_volume(self, pool: str, volume: str) -> VolumeInfo | None:
        with self._mapped("find_volume", pool=pool, volume=volume):
            vol = self._lookup_volume(pool, volume)
            return None if vol is None else _volume_info(pool, volume, vol)

    def create_volume(
        self, pool: str, volume: str, *, capacity_bytes: int, format: str = "raw"
    ) -> VolumeInfo:
        # allocation 0: a dir pool otherwise preallocates the whole capacity.
        xml = (
            f"<volume><name>{escape(volume)}</name><capacity unit='bytes'>{capacity_bytes}</capacity>"
            f"<allocation unit='bytes'>0</allocation><target><format type={quoteattr(format)}/></target>"
            "</volume>"
        )
        with self._mapped("create_volume", pool=pool, volume=volume):
            vol = self._conn.storagePoolLookupByName(pool).createXML(xml, 0)
            return _volume_info(pool, volume, vol)

    def read_volume(self, pool: str, volume: str) -> Iterator[Chunk]:
        """Lazy: nothing is read before the first chunk is asked for. A local file is read directly; else a
        libvirt download, aborted if the reader stops early (an open one keeps the volume "in use", which
        blocks deleting it)."""
        seen = self._local_file(pool, volume) if self._local_files else None
        if seen is not None:
            yield from file_chunks(seen[0])
            return
        yield from self._downloaded(pool, volume)

    def _downloaded(self, pool: str, volume: str) -> Iterator[Chunk]:
        with self._mapped("read_volume", pool=pool, volume=volume):
            vol = self._conn.storagePoolLookupByName(pool).storageVolLookupByName(volume)
            yield from download_chunks(self._conn, vol, host=self._name)

    def volume_digest(self, pool: str, volume: str) -> str:
        """From the volume's own file when this is the local host; else from the host's own evacuator daemon
        (`peer_digests`), which reads its file; else through a libvirt download, which costs that host's
        daemon 1.8 s of CPU per GiB, more than the copy itself."""
        if self._local_files:
            digest = self.local_digest(pool, volume)
            if digest is not None:
                return digest
        elif self._peer_digests is not None:
            info = self.find_volume(pool, volume)
            if info is not None:
                digest = self._peer_digests.digest(
                    host=self._name, pool=pool, volume=volume, allocation_bytes=info.allocation_bytes)
                if digest is not None:
                    return digest
        # Not read_volume: whether the file is local was settled above, and looking again costs a lookup.
        return block_digest_of_chunks(self._downloaded(pool, volume))

    def local_digest(self, pool: str, volume: str, *, flush: bool = False) -> str | None:
        """The digest of the volume's file as this process reads it, or None when it does not see the file
        libvirt describes. A file that changes while read is an error: the disk belongs to no running VM.
        `flush`: first make the file durable (fsync), as a copy must be before its source is removed."""
        before = self._local_file(pool, volume)
        if before is None:
            return None
        if flush:
            flush_file(before[0])
        digest = block_digest_of_chunks(file_chunks(before[0]))
        if self._local_file(pool, volume) != before:
            raise HypervisorError(f"host {self._name}: {pool}/{volume} changed while it was digested")
        return digest

    def local_file(self, pool: str, volume: str) -> Path | None:
        """The volume's file when this process sees the very file libvirt describes, else None."""
        seen = self._local_file(pool, volume)
        return None if seen is None else seen[0]

    def _local_file(self, pool: str, volume: str) -> tuple[Path, int, int] | None:
        with self._mapped("read_volume", pool=pool, volume=volume):
            xml = self._conn.storagePoolLookupByName(pool).storageVolLookupByName(volume).XMLDesc(0)
        seen = seen_file(xml)
        if seen is None:
            # Another mount namespace, a stale view or no file at all: libvirt's download is right.
            log.info("volume_read_streamed", host=self._name, pool=pool, volume=volume)
        return seen

    def write_volume(self, pool: str, volume: str, chunks: Iterable[Chunk]) -> int:
        """Onto a freshly created volume: through the host's own daemon when it takes it (its data channel
        writes the file itself, about three times faster); else one plain libvirt upload per run of data (a
        sparse upload costs libvirtd four times the CPU), holes skipped, a trailing hole sent as a hole."""
        if self._volume_sender is not None:
            written = self._volume_sender.send(host=self._name, uri=self._uri, pool=pool, volume=volume,
                                               chunks=chunks)
            if written is not None:
                return written
        with self._mapped("write_volume", pool=pool, volume=volume):
            vol = self._conn.storagePoolLookupByName(pool).storageVolLookupByName(volume)
            return upload_chunks(self._conn, vol, chunks)

    def delete_volume(self, pool: str, volume: str) -> None:
        with self._mapped("delete_volume", pool=pool, volume=volume):
            self._conn.storagePoolLookupByName(pool).storageVolLookupByName(volume).delete(0)

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

    def _lookup_volume(self, pool: str, volume: str) -> Any | None:
        try:
            return self._conn.storagePoolLookupByName(pool).storageVolLookupByName(volume)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
                return None
            raise

    @contextmanager
    def _mapped(self, operation: str, **context: str) -> Iterator[None]:
        try:
            yield
        except libvirt.libvirtError as exc:
            where = " ".join(f"{key}={value}" for key, value in context.items())
            raise HypervisorError(
                f"host {self._name}: {operation} {where} failed: {exc.get_error_message()}".replace("  ", " ")
            ) from exc


def _volume_info(pool: str, volume: str, vol: Any) -> VolumeInfo:
    _type, capacity_bytes, allocation_bytes = vol.info()
    element = ElementTree.fromstring(vol.XMLDesc(0)).find("./target/format")
    return VolumeInfo(
        pool=pool, volume=volume, capacity_bytes=int(capacity_bytes), allocation_bytes=int(allocation_bytes),
        format="raw" if element is None else element.get("type", "raw"),
    )
