"""The volume half of the Hypervisor protocol over one libvirt connection (LibvirtHost adds the domains)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from xml.etree import ElementTree
from xml.sax.saxutils import escape, quoteattr

import libvirt
import structlog

from evacuator.errors import HypervisorError
from evacuator.hypervisor.libvirt.streams import (
    download_chunks,
    file_id,
    patch_chunks,
    seen_file,
    seen_file_stat,
    upload_chunks,
)
from evacuator.hypervisor.model import LiveRead, PeerDigests, StoredFile, VolumeInfo, VolumeSender
from evacuator.transfer.chunks import Chunk, HoleChunk
from evacuator.transfer.digests import block_digest_of_chunks
from evacuator.transfer.direct_io import block_digest_of_file
from evacuator.transfer.files import LiveFile, file_chunks, file_identity, flush_file

log = structlog.get_logger(__name__)


class LibvirtStorage:
    """A host's volumes through its libvirt connection; a local file is read directly when this process
    sees the very file libvirt describes (`local_files`)."""

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

    def read_volume_live(self, pool: str, volume: str) -> LiveRead | None:
        """The local file libvirt names, opened without the size and time check (its running VM changes
        both): which file it was is checked once the VM is off (`stored_file`)."""
        if not self._local_files:
            return None
        identity = file_identity(self._volume_xml("read_volume_live", pool, volume))
        if identity is None:
            return None
        try:
            live = LiveFile(identity[0])
        except OSError:
            return None  # not visible from this process: only libvirt can read it
        return LiveRead(chunks=live, identity=file_id(*live.identity))

    def stored_file(self, pool: str, volume: str) -> StoredFile | None:
        if not self._local_files:
            return None
        seen = seen_file_stat(self._volume_xml("stored_file", pool, volume))
        if seen is None:
            return None
        _identity, found = seen
        return StoredFile(identity=file_id(found.st_dev, found.st_ino), length_bytes=found.st_size)

    def read_volume_range(
        self, pool: str, volume: str, *, offset_bytes: int, length_bytes: int
    ) -> Iterator[Chunk]:
        end_bytes = offset_bytes + length_bytes
        seen = self._local_file(pool, volume) if self._local_files else None
        if seen is not None:
            yield from file_chunks(seen[0], start_bytes=offset_bytes, end_bytes=end_bytes)
            return
        got = 0
        with self._mapped("read_volume_range", pool=pool, volume=volume):
            vol = self._conn.storagePoolLookupByName(pool).storageVolLookupByName(volume)
            for chunk in download_chunks(self._conn, vol, host=self._name, offset_bytes=offset_bytes,
                                         length_bytes=length_bytes):
                got += chunk.length_bytes if isinstance(chunk, HoleChunk) else len(chunk.data)
                yield chunk
        if got != length_bytes:
            raise HypervisorError(f"host {self._name}: {pool}/{volume} ends before byte {end_bytes}")

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
        digest = block_digest_of_file(before[0])
        if self._local_file(pool, volume) != before:
            raise HypervisorError(f"host {self._name}: {pool}/{volume} changed while it was digested")
        return digest

    def local_file(self, pool: str, volume: str) -> Path | None:
        """The volume's file when this process sees the very file libvirt describes, else None."""
        seen = self._local_file(pool, volume)
        return None if seen is None else seen[0]

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

    def patch_volume(self, pool: str, volume: str, patches: Iterable[tuple[int, bytes]]) -> int:
        """Through libvirt, one upload per run of patched bytes (a daemon's data channel writes fresh
        volumes only; a pre-copy's patches are the few blocks its guest changed)."""
        with self._mapped("patch_volume", pool=pool, volume=volume):
            vol = self._conn.storagePoolLookupByName(pool).storageVolLookupByName(volume)
            return upload_chunks(self._conn, vol, patch_chunks(patches), coalesce_hole_bytes=0)

    def delete_volume(self, pool: str, volume: str) -> None:
        with self._mapped("delete_volume", pool=pool, volume=volume):
            self._conn.storagePoolLookupByName(pool).storageVolLookupByName(volume).delete(0)

    def _downloaded(self, pool: str, volume: str) -> Iterator[Chunk]:
        with self._mapped("read_volume", pool=pool, volume=volume):
            vol = self._conn.storagePoolLookupByName(pool).storageVolLookupByName(volume)
            yield from download_chunks(self._conn, vol, host=self._name)

    def _local_file(self, pool: str, volume: str) -> tuple[Path, int, int] | None:
        seen = seen_file(self._volume_xml("read_volume", pool, volume))
        if seen is None:
            # Another mount namespace, a stale view or no file at all: libvirt's download is right.
            log.info("volume_read_streamed", host=self._name, pool=pool, volume=volume)
        return seen

    def _volume_xml(self, operation: str, pool: str, volume: str) -> str:
        with self._mapped(operation, pool=pool, volume=volume):
            return str(self._conn.storagePoolLookupByName(pool).storageVolLookupByName(volume).XMLDesc(0))

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
