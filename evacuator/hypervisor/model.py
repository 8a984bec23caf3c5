"""The hypervisor seam: the Protocol the migrator drives, its value types, and pure domain-XML reading."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol
from xml.etree import ElementTree

from evacuator.errors import HypervisorError
from evacuator.hypervisor.facts import NAMESPACE_URI, ROOT_ELEMENT, VmFacts, facts_from_element
from evacuator.hypervisor.origin import Origin, find_origin
from evacuator.transfer.chunks import Chunk


class VmState(StrEnum):
    """Where a defined VM is in its life; everything libvirt reports besides these three is OTHER."""

    RUNNING = "running"
    SHUT_OFF = "shut_off"
    PAUSED = "paused"
    OTHER = "other"


@dataclass(frozen=True, slots=True, kw_only=True)
class VolumeRef:
    """A disk volume by pool and volume name, as a `<disk type='volume'>` names it."""

    pool: str
    volume: str


@dataclass(frozen=True, slots=True, kw_only=True)
class VolumeInfo:
    """A volume and its sizes: capacity is what the guest sees, allocation what the host stores."""

    pool: str
    volume: str
    capacity_bytes: int
    allocation_bytes: int
    # The on-disk format ("raw", "qcow2"): a copy is created in the same format and receives the same bytes.
    format: str = "raw"


@dataclass(frozen=True, slots=True, kw_only=True)
class VmDefinition:
    """What a VM's persistent definition says about its identity and disks."""

    uuid: str
    name: str
    macs: tuple[str, ...]
    volumes: tuple[VolumeRef, ...]
    facts: VmFacts
    # What the guest was given (`<memory>`, `<vcpu>`): what a destination must have room for.
    memory_bytes: int = 0
    vcpus: int = 0
    origin: Origin | None = None  # the host it was evacuated from (hypervisor/origin.py)


@dataclass(frozen=True, slots=True, kw_only=True)
class VmInfo:
    """A VM defined on a host, with its live state."""

    uuid: str
    name: str
    state: VmState
    macs: tuple[str, ...]
    volumes: tuple[VolumeRef, ...]
    facts: VmFacts
    origin: Origin | None = None  # the host it was evacuated from (hypervisor/origin.py)


def is_active(vm: VmInfo | None) -> bool:
    """Whether the VM exists and is anything but shut off (paused and crashed still hold their disks)."""
    return vm is not None and vm.state is not VmState.SHUT_OFF


@dataclass(frozen=True, slots=True, kw_only=True)
class LiveRead:
    """A volume read while its VM may still be writing it (a pre-copy): each chunk is read only when asked
    for, never ahead, and `identity` names the stored file the bytes come from."""

    chunks: Iterator[Chunk]
    identity: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredFile:
    """The file a volume is stored in, as this host reads it: which file, and how long it is."""

    identity: str
    length_bytes: int


class Hypervisor(Protocol):
    """One hypervisor host as the migrator sees it. Every failure raises HypervisorError."""

    @property
    def name(self) -> str: ...

    def list_vms(self) -> tuple[VmInfo, ...]: ...

    def find_vm(self, uuid: str) -> VmInfo | None: ...

    def vm_definition_xml(self, uuid: str) -> str:
        """The persistent (inactive) definition, fit to define the same VM on another host."""
        ...

    def define_vm(self, definition_xml: str) -> VmInfo: ...

    def start_vm(self, uuid: str) -> None: ...

    def request_shutdown(self, uuid: str) -> None:
        """Asks the guest to power off (ACPI) and returns at once; the guest may ignore it."""
        ...

    def destroy_vm(self, uuid: str) -> None:
        """Powers the VM off at once, like pulling the plug."""
        ...

    def undefine_vm(self, uuid: str) -> None: ...

    def set_origin(self, uuid: str, origin: Origin | None) -> None:
        """Records where the VM was evacuated from in its definition (and its running domain), or removes
        that record (None)."""
        ...

    def find_volume(self, pool: str, volume: str) -> VolumeInfo | None: ...

    def create_volume(
        self, pool: str, volume: str, *, capacity_bytes: int, format: str = "raw"
    ) -> VolumeInfo:
        """Creates an empty, sparse (allocation 0) volume of that format and capacity (virtual size)."""
        ...

    def read_volume(self, pool: str, volume: str) -> Iterator[Chunk]:
        """The volume's content from offset 0 to its capacity, unallocated runs as holes."""
        ...

    def write_volume(self, pool: str, volume: str, chunks: Iterable[Chunk]) -> int:
        """Writes chunks from offset 0 into an existing volume; returns data bytes written, holes excluded."""
        ...

    def read_volume_live(self, pool: str, volume: str) -> LiveRead | None:
        """The volume's stored bytes from offset 0 to the end of its file, each chunk read only when asked
        for; None when this host cannot promise that (a libvirt download reads ahead)."""
        ...

    def stored_file(self, pool: str, volume: str) -> StoredFile | None:
        """The file the volume is stored in, checked as read_volume checks it; None when this host reads
        the volume through libvirt."""
        ...

    def read_volume_range(
        self, pool: str, volume: str, *, offset_bytes: int, length_bytes: int
    ) -> Iterator[Chunk]:
        """The volume's stored bytes over [offset, offset + length), holes as holes; HypervisorError when the
        volume ends before."""
        ...

    def patch_volume(self, pool: str, volume: str, patches: Iterable[tuple[int, bytes]]) -> int:
        """Writes each (offset, bytes) into an existing volume, leaving every other byte as it is (a write
        past the end lengthens it); returns the bytes written."""
        ...

    def volume_digest(self, pool: str, volume: str) -> str:
        """The BlockDigest of the volume's stored bytes (as read_volume yields them), by the cheapest honest
        path this host offers."""
        ...

    def delete_volume(self, pool: str, volume: str) -> None: ...

    def migrate_live(self, uuid: str, destination: Hypervisor) -> None:
        """Live-migrates the running VM with its storage to `destination` (a host of the same kind),
        defines it there and undefines it here; its volumes stay behind here. On failure it runs here."""
        ...


class PeerDigests(Protocol):
    """Asks a host's own evacuator daemon for the BlockDigest of one of its volumes."""

    def digest(self, *, host: str, pool: str, volume: str, allocation_bytes: int) -> str | None:
        """The digest, or None when no valid answer came (the caller then reads the volume itself)."""
        ...


class VolumeSender(Protocol):
    """Writes a volume through a host's own evacuator daemon (evacuator/transfer/sender.py)."""

    def send(self, *, host: str, uri: str, pool: str, volume: str, chunks: Iterable[Chunk]) -> int | None:
        """Data bytes written, durably; None when that host's daemon cannot take it now and nothing was
        taken from `chunks` (the caller then writes through libvirt)."""
        ...


def parse_definition(xml: str) -> VmDefinition:
    """Reads identity, NICs, volume disks and evacuator facts from a libvirt domain XML document."""
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError as exc:
        raise HypervisorError(f"domain XML is not well-formed: {exc}") from exc
    uuid = (root.findtext("uuid") or "").strip().lower()
    name = (root.findtext("name") or "").strip()
    if not uuid or not name:
        raise HypervisorError("domain XML lacks <uuid> or <name>")
    macs = tuple(
        mac.get("address", "").lower() for mac in root.findall("./devices/interface/mac")
    )
    volumes = tuple(
        VolumeRef(pool=source.get("pool", ""), volume=source.get("volume", ""))
        for source in root.findall("./devices/disk[@type='volume']/source")
    )
    element = root.find(f"./metadata/{{{NAMESPACE_URI}}}{ROOT_ELEMENT}")
    facts = VmFacts() if element is None else facts_from_element(element)
    return VmDefinition(uuid=uuid, name=name, macs=macs, volumes=volumes, facts=facts,
                        memory_bytes=_memory_bytes(root), vcpus=_int_text(root.findtext("vcpu"), "vcpu"),
                        origin=find_origin(root))  # fmt: skip


# libvirt's memory units (domain XML "unit" attribute); without one it means KiB.
_UNIT_BYTES = {"b": 1, "bytes": 1, "k": 1 << 10, "kib": 1 << 10, "kb": 1000, "m": 1 << 20, "mib": 1 << 20,
               "mb": 1000**2, "g": 1 << 30, "gib": 1 << 30, "gb": 1000**3, "t": 1 << 40, "tib": 1 << 40,
               "tb": 1000**4, "p": 1 << 50, "pib": 1 << 50, "pb": 1000**5, "e": 1 << 60, "eib": 1 << 60,
               "eb": 1000**6}


def _memory_bytes(root: ElementTree.Element) -> int:
    element = root.find("memory")
    if element is None:
        return 0
    unit = (element.get("unit") or "KiB").lower()
    if unit not in _UNIT_BYTES:
        raise HypervisorError(f"domain XML: <memory> has an unknown unit {unit!r}")
    return _int_text(element.text, "memory") * _UNIT_BYTES[unit]


def _int_text(text: str | None, what: str) -> int:
    if text is None or not text.strip():
        return 0
    try:
        value = int(text.strip())
    except ValueError:
        raise HypervisorError(f"domain XML: <{what}> is not a whole number: {text.strip()[:40]!r}") from None
    if value < 0:
        raise HypervisorError(f"domain XML: <{what}> is negative")
    return value
