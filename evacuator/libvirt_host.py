"""The Hypervisor protocol over one libvirt connection; libvirt errors become HypervisorError here."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any
from xml.etree import ElementTree
from xml.sax.saxutils import escape, quoteattr

import libvirt
import structlog

from evacuator.errors import HypervisorError
from evacuator.hypervisor import (
    Chunk,
    Hypervisor,
    VmInfo,
    VmState,
    VolumeInfo,
    parse_definition,
)
from evacuator.libvirt_volumes import download_chunks, seen_file, upload_chunks
from evacuator.volume_io import file_chunks

log = structlog.get_logger(__name__)

_STATES = {
    libvirt.VIR_DOMAIN_RUNNING: VmState.RUNNING,
    libvirt.VIR_DOMAIN_SHUTOFF: VmState.SHUT_OFF,
    libvirt.VIR_DOMAIN_PAUSED: VmState.PAUSED,
}


def _quiet(context: object, error: object) -> None:
    """libvirt's default handler prints every error to stderr, even the "not found" answers the migrator
    expects while it reads where a VM really is; the errors still reach us as exceptions, mapped below."""


_event_loop_lock = threading.Lock()
_event_loop_started = False


def _ensure_event_loop() -> None:
    """libvirt's keepalive needs its event loop running in the process (RECIPES); started once."""
    global _event_loop_started
    with _event_loop_lock:
        if _event_loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _event_loop_started = True


def open_libvirt_host(
    name: str, uri: str, pool: str, *, keepalive_interval_seconds: int = 5, keepalive_count: int = 3,
    open_timeout_seconds: float = 60.0, local_files: bool = False,
) -> LibvirtHost:
    """Opens a read-write connection to one host; `pool` is where this host keeps evacuator-managed disks.
    `local_files`: this is the host the process runs on, so a volume libvirt keeps in a local file may be
    read from that file (checked against libvirt's view first) instead of through a libvirt download.

    A host that stops answering (hung daemon, dead link) must fail a move, not stall it forever: the open is
    bounded (a stopped daemon accepts the TCP connection and never replies), and keepalive closes the
    connection after `interval * count` seconds of silence, which aborts a stream copy in progress."""
    libvirt.registerErrorHandler(_quiet, None)
    _ensure_event_loop()
    outcome: list[Any] = []

    def connect() -> None:
        try:
            outcome.append(libvirt.open(uri))
        except libvirt.libvirtError as exc:
            outcome.append(exc)

    opener = threading.Thread(target=connect, name=f"libvirt-open-{name}", daemon=True)
    opener.start()
    opener.join(open_timeout_seconds)
    if not outcome:
        # The opener thread stays blocked until the host answers or the process ends: a rare, bounded leak.
        raise HypervisorError(f"host {name}: {uri} did not answer within {open_timeout_seconds:.0f} s")
    if isinstance(outcome[0], libvirt.libvirtError):
        raise HypervisorError(
            f"host {name}: cannot connect to {uri}: {outcome[0].get_error_message()}") from outcome[0]
    connection = outcome[0]
    try:
        connection.setKeepAlive(keepalive_interval_seconds, keepalive_count)
    except libvirt.libvirtError as exc:
        # Local drivers (test:///) have no keepalive; a remote daemon always does.
        log.warning("libvirt_keepalive_unavailable", host=name, error=exc.get_error_message())
    return LibvirtHost(name=name, uri=uri, pool=pool, connection=connection, local_files=local_files)


class LibvirtHost:
    """One hypervisor host reached through libvirt; owns its connection. One mover uses it at a time (a
    copy reads the source on a prefetch thread while it writes the destination: libvirt connections are
    thread-safe)."""

    def __init__(self, *, name: str, uri: str, pool: str, connection: Any, local_files: bool = False) -> None:
        self._local_files = local_files
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
        path = self._local_file(pool, volume) if self._local_files else None
        if path is not None:
            yield from file_chunks(path)
            return
        with self._mapped("read_volume", pool=pool, volume=volume):
            vol = self._conn.storagePoolLookupByName(pool).storageVolLookupByName(volume)
            yield from download_chunks(self._conn, vol, host=self._name)

    def _local_file(self, pool: str, volume: str) -> Path | None:
        with self._mapped("read_volume", pool=pool, volume=volume):
            xml = self._conn.storagePoolLookupByName(pool).storageVolLookupByName(volume).XMLDesc(0)
        path = seen_file(xml)
        if path is None:
            # Another mount namespace, a stale view or no file at all: libvirt's download is right.
            log.info("volume_read_streamed", host=self._name, pool=pool, volume=volume)
        return path

    def write_volume(self, pool: str, volume: str, chunks: Iterable[Chunk]) -> int:
        """Onto a freshly created volume: one plain upload per run of data (a sparse upload costs the
        daemon four times the CPU), holes skipped, a trailing hole sent as a hole to set the length."""
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
