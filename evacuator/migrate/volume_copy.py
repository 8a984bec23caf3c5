"""Copies one volume between hosts: the mover's transfer, without the move around it."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from evacuator.errors import EvacuatorError
from evacuator.hypervisor.model import Hypervisor, VolumeInfo, VolumeRef
from evacuator.transfer.chunks import Chunk, close_chunks
from evacuator.transfer.digests import BlockDigest
from evacuator.transfer.files import prefetched

T = TypeVar("T")


class CopyStalled(EvacuatorError):
    """A copy took longer than its size allows: the destination (or the link to it) stalled."""


class CopyRefused(EvacuatorError):
    """The destination holds something a copy must not touch (another VM's volume of that name)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CopiedVolume:
    """What a copy wrote, and the block digest of what it sent (the source's content, read once)."""

    bytes_written: int
    sent_digest: str
    # Set when a pre-copy was finished (what its last pass wrote, once the VM was off); None: copied afresh.
    patched_bytes: int | None = None


def copy_volume(
    source: Hypervisor, destination: Hypervisor, volume: VolumeInfo, *, limit_seconds: float,
    clock: Callable[[], datetime], reading: Iterator[Chunk] | None = None, digest: BlockDigest | None = None,
    sending: Callable[[Iterator[Chunk]], Iterator[Chunk]] | None = None,
) -> CopiedVolume:
    """Creates `volume` (of `source`) on `destination` with the same capacity and format and copies its
    bytes: read and hashed on a thread of their own, so the source's disk and the destination's upload
    overlap (each would otherwise wait for the other). Raises CopyStalled past `limit_seconds`; the
    partial copy is left for the caller to remove. `reading`: the source's chunks (default: read_volume),
    `digest`: the BlockDigest they are hashed into, `sending`: what the sending thread passes them through
    (a pre-copy's look at its VM)."""
    pool, name = volume.pool, volume.volume
    try:
        destination.create_volume(pool, name, capacity_bytes=volume.capacity_bytes, format=volume.format)
    except BaseException:
        if reading is not None:
            close_chunks(reading)
        raise
    sent = BlockDigest() if digest is None else digest
    ahead = prefetched(sent.tap(source.read_volume(pool, name) if reading is None else reading))
    chunks = within(limit_seconds, f"copying {pool}/{name}", ahead, clock)
    try:
        written = destination.write_volume(pool, name, chunks if sending is None else sending(chunks))
    finally:
        close_chunks(ahead)
    return CopiedVolume(bytes_written=written, sent_digest=sent.hexdigest())


def clear_leftover(destination: Hypervisor, ref: VolumeRef, in_use: Collection[VolumeRef]) -> None:
    """Removes a copy an interrupted attempt left on `destination` (its completeness is unknown, so it is
    redone); raises CopyRefused when that volume belongs to a VM there."""
    if destination.find_volume(ref.pool, ref.volume) is None:
        return
    if ref in in_use:
        raise CopyRefused(f"{ref.pool}/{ref.volume} on {destination.name} belongs to another VM")
    destination.delete_volume(ref.pool, ref.volume)


def within(limit_seconds: float, what: str, items: Iterator[T], clock: Callable[[], datetime]) -> Iterator[T]:
    """Passes items on until `what` has taken longer than its size allows."""
    began = clock()
    for item in items:
        if (clock() - began).total_seconds() > limit_seconds:
            raise CopyStalled(f"{what} took over {limit_seconds:.0f} s")
        yield item
