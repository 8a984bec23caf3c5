"""Copies a running VM's disks while it shuts down, then, once it is off, only the blocks it may have changed.

Why: a cold move cannot start copying before its guest is off, so the first moves of an evacuation leave
the link idle for a whole shutdown (up to the shutdown timeout, then a forced power-off). A pre-copy runs
during that wait instead, under a transfer slot that was free at once (it never waits for one, and never
takes one a VM that is already off is waiting for).

Why it is exact: each chunk is read only when the copy asks for it (Hypervisor.read_volume_live), and just
before asking, the reader looks whether the VM has been seen off. Every byte read after that moment is the
disk's final content, because a guest that is off writes nothing more. So the bytes read before it (the
unsettled prefix), and any growth of the file since the copy began, are read again once the VM is off,
block by block (BLOCK_BYTES), and only blocks whose digest differs from what was sent are written again
(Hypervisor.patch_volume). The pre-copy's file must be the very file libvirt names once the VM is off
(Hypervisor.stored_file), else, as on any doubt (a file that shrank, a destination copy gone), the move
copies the whole volume again. Its verification is unchanged: the destination's digest of what it stores
against the digest of the source's final content.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime

import structlog

from evacuator.errors import EvacuatorError, HypervisorError
from evacuator.hypervisor.model import Hypervisor, VmInfo, VolumeInfo, VolumeRef
from evacuator.migrate.shutdown_watch import ShutdownWatch
from evacuator.migrate.steps import PrecopiedVolume
from evacuator.migrate.volume_copy import CopiedVolume, CopyRefused, clear_leftover, copy_volume, within
from evacuator.transfer.chunks import Chunk, HoleChunk, close_chunks
from evacuator.transfer.digests import BLOCK_BYTES, BlockDigest, block_digest, digest_of_blocks

log = structlog.get_logger(__name__)

Clock = Callable[[], datetime]
_ZERO_BLOCK = bytes(BLOCK_BYTES)


class Settling:
    """Counts the bytes read, and notes where the first chunk asked for after `off` was set begins."""

    def __init__(self, off: threading.Event) -> None:
        self._off = off
        self.length_bytes = 0
        self.settled_bytes: int | None = None

    def tap(self, chunks: Iterator[Chunk]) -> Iterator[Chunk]:
        try:
            while True:
                # Looked at before the read: whatever this read returns, the VM was off when it began.
                if self.settled_bytes is None and self._off.is_set():
                    self.settled_bytes = self.length_bytes
                try:
                    chunk = next(chunks)
                except StopIteration:
                    return
                self.length_bytes += _length(chunk)
                yield chunk
        finally:
            close_chunks(chunks)


def precopy_during_shutdown(
    source: Hypervisor, destination: Hypervisor, vm: VmInfo, *, watch: ShutdownWatch, clock: Clock,
    limit_for: Callable[[VolumeInfo], float],
) -> dict[VolumeRef, PrecopiedVolume]:
    """Copies the VM's disks once while it shuts down (it was asked to; `watch` powers it off at its
    deadline), and returns what was pre-copied. A failure costs only the pre-copy (logged): nothing is
    pre-copied, and the caller's copy starts afresh."""
    try:
        return precopy_disks(source, destination, vm.volumes, watch=watch, limit_for=limit_for, clock=clock)
    except EvacuatorError as exc:
        log.warning("precopy_abandoned", vm_uuid=vm.uuid, error=str(exc))
        return {}


def copy_after_shutdown(
    source: Hypervisor, destination: Hypervisor, volumes: Iterable[VolumeRef], *,
    precopied: Mapping[VolumeRef, PrecopiedVolume], limit_for: Callable[[VolumeInfo], float], clock: Clock,
) -> dict[VolumeRef, CopiedVolume]:
    """Copies each volume of a VM that is off: by finishing its pre-copy where one can be trusted, else
    afresh (a copy an interrupted attempt left is removed first). Returns what each copy wrote (a finished
    pre-copy's bytes included) and the digest of what the destination must now hold."""
    in_use = {ref for vm in destination.list_vms() for ref in vm.volumes}
    copied: dict[VolumeRef, CopiedVolume] = {}
    for ref in volumes:
        volume = source.find_volume(ref.pool, ref.volume)
        if volume is None:
            raise CopyRefused(f"source volume {ref.pool}/{ref.volume} is missing")
        earlier = precopied.get(ref)
        if earlier is not None:
            finished = finish_precopy(source, destination, ref, earlier, limit_seconds=limit_for(volume),
                                      clock=clock)
            if finished is not None:
                copied[ref] = CopiedVolume(bytes_written=earlier.bytes_written + finished.bytes_written,
                                           sent_digest=finished.sent_digest,
                                           patched_bytes=finished.bytes_written)
                continue
        clear_leftover(destination, ref, in_use)
        copied[ref] = copy_volume(source, destination, volume, limit_seconds=limit_for(volume), clock=clock)
    return copied


def precopy_disks(
    source: Hypervisor, destination: Hypervisor, volumes: Iterable[VolumeRef], *, watch: ShutdownWatch,
    limit_for: Callable[[VolumeInfo], float], clock: Clock,
) -> dict[VolumeRef, PrecopiedVolume]:
    """Copies each volume once while the VM may still run; stops at the first that cannot be read live
    (the rest are copied once the VM is off). EvacuatorError on failure: the caller copies afresh."""
    in_use = {ref for vm in destination.list_vms() for ref in vm.volumes}
    copied: dict[VolumeRef, PrecopiedVolume] = {}
    for ref in volumes:
        volume = source.find_volume(ref.pool, ref.volume)
        if volume is None:
            raise HypervisorError(f"host {source.name}: source volume {ref.pool}/{ref.volume} is missing")
        live = source.read_volume_live(ref.pool, ref.volume)
        if live is None:
            break
        try:
            clear_leftover(destination, ref, in_use)
        except BaseException:
            close_chunks(live.chunks)
            raise
        settling = Settling(watch.off)
        digest = BlockDigest(keep_blocks=True)
        sent = copy_volume(source, destination, volume, limit_seconds=limit_for(volume), clock=clock,
                           reading=settling.tap(live.chunks), digest=digest, sending=watch.polled)
        assert digest.blocks is not None
        copied[ref] = PrecopiedVolume(
            identity=live.identity, length_bytes=settling.length_bytes, block_digests=tuple(digest.blocks),
            settled_bytes=settling.length_bytes if settling.settled_bytes is None else settling.settled_bytes,
            bytes_written=sent.bytes_written,
        )  # fmt: skip
    return copied


def finish_precopy(
    source: Hypervisor, destination: Hypervisor, ref: VolumeRef, precopied: PrecopiedVolume, *,
    limit_seconds: float, clock: Clock,
) -> CopiedVolume | None:
    """With the VM off: re-reads what the pre-copy may have missed and writes the blocks that changed.
    None when the pre-copy cannot be trusted (another file, a file that shrank, the copy gone): the caller
    then copies the volume afresh."""
    stored = source.stored_file(ref.pool, ref.volume)
    if (stored is None or stored.identity != precopied.identity
            or stored.length_bytes < precopied.length_bytes):
        log.info("precopy_unusable", host=source.name, pool=ref.pool, volume=ref.volume,
                 reason="the source file is another, or shorter, than the one pre-copied")
        return None
    if destination.find_volume(ref.pool, ref.volume) is None:
        return None
    digests = list(precopied.block_digests)
    ranges = unsettled_ranges(precopied.length_bytes, precopied.settled_bytes, stored.length_bytes)

    def patches() -> Iterator[tuple[int, bytes]]:
        for start, end in ranges:
            chunks = source.read_volume_range(ref.pool, ref.volume, offset_bytes=start,
                                              length_bytes=end - start)
            try:
                yield from changed_blocks(digests, start, chunks)
            finally:
                close_chunks(chunks)

    written = destination.patch_volume(
        ref.pool, ref.volume, within(limit_seconds, f"patching {ref.pool}/{ref.volume}", patches(), clock))
    log.info("precopy_finished", host=source.name, pool=ref.pool, volume=ref.volume,
             reread_bytes=sum(end - start for start, end in ranges), patched_bytes=written)
    return CopiedVolume(bytes_written=written, sent_digest=digest_of_blocks(digests))


def unsettled_ranges(precopied_bytes: int, settled_bytes: int, length_bytes: int) -> list[tuple[int, int]]:
    """The block-aligned byte ranges to read again: the prefix read before the VM was off, and whatever
    the file grew by since the pre-copy began (from the block the pre-copy ended in)."""
    ranges: list[tuple[int, int]] = []
    head_end = min(-(-settled_bytes // BLOCK_BYTES) * BLOCK_BYTES, length_bytes)
    if head_end > 0:
        ranges.append((0, head_end))
    if length_bytes > precopied_bytes:
        tail_start = precopied_bytes // BLOCK_BYTES * BLOCK_BYTES
        if ranges and tail_start <= ranges[-1][1]:
            ranges[-1] = (0, length_bytes)
        else:
            ranges.append((tail_start, length_bytes))
    return ranges


def changed_blocks(
    digests: list[bytes], start_bytes: int, chunks: Iterable[Chunk]
) -> Iterator[tuple[int, bytes]]:
    """Each block of `chunks` (which begin at the block-aligned `start_bytes`) whose digest differs from
    `digests` (or lies past them), as (offset, content); `digests` is updated to the new content."""
    index = start_bytes // BLOCK_BYTES
    for block in _blocks(chunks):
        digest = block_digest(block)
        if index < len(digests) and digests[index] == digest:
            index += 1
            continue
        if index < len(digests):
            digests[index] = digest
        else:
            digests.append(digest)
        yield index * BLOCK_BYTES, bytes(block)
        index += 1


def _blocks(chunks: Iterable[Chunk]) -> Iterator[bytes | bytearray]:
    """The content of consecutive BLOCK_BYTES blocks (the last may be shorter), holes as zeros."""
    block = bytearray()
    for chunk in chunks:
        if isinstance(chunk, HoleChunk):
            remaining = chunk.length_bytes
            while remaining:  # a whole block of hole is the shared zero block: nothing is allocated
                take = min(remaining, BLOCK_BYTES - len(block))
                if take == BLOCK_BYTES:
                    yield _ZERO_BLOCK
                else:
                    block += _ZERO_BLOCK[:take]
                remaining -= take
                if len(block) == BLOCK_BYTES:
                    yield block
                    block = bytearray()
            continue
        view = memoryview(chunk.data)
        while view:
            take = min(len(view), BLOCK_BYTES - len(block))
            block += view[:take]
            view = view[take:]
            if len(block) == BLOCK_BYTES:
                yield block
                block = bytearray()
    if block:
        yield block


def _length(chunk: Chunk) -> int:
    return chunk.length_bytes if isinstance(chunk, HoleChunk) else len(chunk.data)

