"""The hypervisor seam: the Protocol the migrator drives, its value types, and pure domain-XML reading."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol
from xml.etree import ElementTree

import xxhash

from evacuator.errors import HypervisorError
from evacuator.vmmeta import NAMESPACE_URI, ROOT_ELEMENT, VmFacts, facts_from_element

_ZEROS = bytes(1 << 20)


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


@dataclass(frozen=True, slots=True, kw_only=True)
class VmInfo:
    """A VM defined on a host, with its live state."""

    uuid: str
    name: str
    state: VmState
    macs: tuple[str, ...]
    volumes: tuple[VolumeRef, ...]
    facts: VmFacts


@dataclass(frozen=True, slots=True, kw_only=True)
class DataChunk:
    """Bytes of a volume, in order."""

    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class HoleChunk:
    """A run of unallocated (all-zero) bytes of a volume: only its length travels."""

    length_bytes: int


Chunk = DataChunk | HoleChunk


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

    def volume_digest(self, pool: str, volume: str) -> str:
        """The BlockDigest of the volume's stored bytes (as read_volume yields them), by the cheapest honest
        path this host offers."""
        ...

    def delete_volume(self, pool: str, volume: str) -> None: ...

    def migrate_live(self, uuid: str, destination: Hypervisor) -> None:
        """Live-migrates the running VM with its storage to `destination` (a host of the same kind),
        defines it there and undefines it here; its volumes stay behind here. On failure it runs here."""
        ...


class _Tapped:
    """A running digest of chunks that can also hash them as they pass."""

    def update(self, chunk: Chunk) -> None:
        raise NotImplementedError

    def tap(self, chunks: Iterable[Chunk]) -> Iterator[Chunk]:
        """Passes the chunks through, hashing them on the way (closing it closes them)."""
        try:
            for chunk in chunks:
                self.update(chunk)
                yield chunk
        finally:
            close_chunks(chunks)


class ChunkSha256(_Tapped):
    """A running sha256 of the bytes chunks stand for, holes counted as zeros."""

    def __init__(self) -> None:
        self._digest = hashlib.sha256()

    def update(self, chunk: Chunk) -> None:
        if isinstance(chunk, DataChunk):
            self._digest.update(chunk.data)
            return
        remaining = chunk.length_bytes
        while remaining > 0:
            piece = min(remaining, len(_ZEROS))
            self._digest.update(memoryview(_ZEROS)[:piece])
            remaining -= piece

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


_BLOCK_BYTES = 1 << 20


def _block_digest(block: bytes | bytearray | memoryview) -> bytes:
    # XXH3-128 hashes at memory speed (sha256 took a third of a core per copy): it guards against
    # corruption on the way, not against a forger, and the destination host is trusted like the source.
    return xxhash.xxh3_128_digest(block)


_ZERO_BLOCK_DIGEST = _block_digest(_ZEROS)


class BlockDigest(_Tapped):
    """A digest of the bytes chunks stand for that costs nothing for holes: sha256 over the XXH3-128 of
    each 1 MiB block, an all-zero block's being a constant. It depends only on the content (a hole and
    written zeros digest alike), so a copy verifies against what was sent without hashing gigabytes of
    zeros."""

    def __init__(self) -> None:
        self._outer = hashlib.sha256()
        self._block = bytearray()
        self._pending_zero_bytes = 0  # zeros of the current block not yet materialised

    def update(self, chunk: Chunk) -> None:
        if isinstance(chunk, DataChunk):
            self._data(memoryview(chunk.data))
            return
        remaining = chunk.length_bytes
        while remaining > 0:
            filled = len(self._block) + self._pending_zero_bytes
            take = min(remaining, _BLOCK_BYTES - filled)
            if not self._block and self._pending_zero_bytes == 0 and take == _BLOCK_BYTES:
                self._outer.update(_ZERO_BLOCK_DIGEST)
            else:
                self._pending_zero_bytes += take
                self._flush_if_full()
            remaining -= take

    def _data(self, view: memoryview) -> None:
        if len(view) == _BLOCK_BYTES and not self._block and not self._pending_zero_bytes:
            self._outer.update(_block_digest(view))  # a whole aligned block: no copy into the buffer
            return
        while view:
            if self._pending_zero_bytes:
                self._block += bytes(self._pending_zero_bytes)
                self._pending_zero_bytes = 0
            take = min(len(view), _BLOCK_BYTES - len(self._block))
            self._block += view[:take]
            view = view[take:]
            self._flush_if_full()

    def _flush_if_full(self) -> None:
        if len(self._block) + self._pending_zero_bytes == _BLOCK_BYTES:
            self._flush()

    def _flush(self) -> None:
        if self._block:
            self._block += bytes(self._pending_zero_bytes)
            self._outer.update(_block_digest(self._block))
        elif self._pending_zero_bytes == _BLOCK_BYTES:
            self._outer.update(_ZERO_BLOCK_DIGEST)
        elif self._pending_zero_bytes:
            self._outer.update(_block_digest(bytes(self._pending_zero_bytes)))
        self._block = bytearray()
        self._pending_zero_bytes = 0

    def hexdigest(self) -> str:
        self._flush()
        return self._outer.hexdigest()


BLOCK_DIGEST_ALGORITHM = "sha256-of-xxh3-128-per-1mib"
"""BlockDigest's name on the wire: a peer that digests differently must say so, not answer a mismatch."""


class PeerDigests(Protocol):
    """Asks a host's own evacuator daemon for the BlockDigest of one of its volumes."""

    def digest(self, *, host: str, pool: str, volume: str, allocation_bytes: int) -> str | None:
        """The digest, or None when no valid answer came (the caller then reads the volume itself)."""
        ...


def block_digest_of_chunks(chunks: Iterable[Chunk]) -> str:
    digest = BlockDigest()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def close_chunks(chunks: Iterable[Chunk]) -> None:
    """Ends a volume read early and at once: an open download keeps the volume busy (undeletable)."""
    close = getattr(chunks, "close", None)
    if callable(close):
        close()


def sha256_of_chunks(chunks: Iterable[Chunk]) -> str:
    """The sha256 of the bytes the chunks stand for, holes counted as zeros."""
    digest = ChunkSha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


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
    return VmDefinition(uuid=uuid, name=name, macs=macs, volumes=volumes, facts=facts)
