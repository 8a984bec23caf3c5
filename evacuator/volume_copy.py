"""Copies one volume between hosts: the mover's transfer, without the move around it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime

from evacuator.chunk_digests import BlockDigest
from evacuator.errors import EvacuatorError
from evacuator.hypervisor import Chunk, Hypervisor, VolumeInfo, close_chunks
from evacuator.volume_io import prefetched


class CopyStalled(EvacuatorError):
    """A copy took longer than its size allows: the destination (or the link to it) stalled."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CopiedVolume:
    """What a copy wrote, and the block digest of what it sent (the source's content, read once)."""

    bytes_written: int
    sent_digest: str


def copy_volume(
    source: Hypervisor, destination: Hypervisor, volume: VolumeInfo, *, limit_seconds: float,
    clock: Callable[[], datetime],
) -> CopiedVolume:
    """Creates `volume` (of `source`) on `destination` with the same capacity and format and copies its
    bytes: read and hashed on a thread of their own, so the source's disk and the destination's upload
    overlap (each would otherwise wait for the other). Raises CopyStalled past `limit_seconds`; the
    partial copy is left for the caller to remove."""
    pool, name = volume.pool, volume.volume
    destination.create_volume(pool, name, capacity_bytes=volume.capacity_bytes, format=volume.format)
    sent = BlockDigest()
    ahead = prefetched(sent.tap(source.read_volume(pool, name)))
    try:
        written = destination.write_volume(pool, name, _within(limit_seconds, volume, ahead, clock))
    finally:
        close_chunks(ahead)
    return CopiedVolume(bytes_written=written, sent_digest=sent.hexdigest())


def _within(limit_seconds: float, volume: VolumeInfo, chunks: Iterator[Chunk],
            clock: Callable[[], datetime]) -> Iterator[Chunk]:
    """Passes chunks on until the copy has taken longer than its size allows."""
    began = clock()
    for chunk in chunks:
        if (clock() - began).total_seconds() > limit_seconds:
            raise CopyStalled(f"copying {volume.pool}/{volume.volume} took over {limit_seconds:.0f} s")
        yield chunk
