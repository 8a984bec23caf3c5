"""Pre-copy passes over a running VM's volume: the first sends it whole, each later one only the blocks whose
digest changed since the destination last got them (a window's pre-copy, and a shutdown's after one).

Why block digests and not QEMU's dirty bitmaps: a pass reads the very file libvirt names (read_volume_live),
so it sees every write, QEMU's or not, in any format (raw or qcow2, whose file is copied as stored); libvirt's
checkpoints need qcow2 and see only the guest's writes through QEMU (docs/moves.md, "Pre-copy"). Reading the
file again costs local disk or page-cache reads and XXH3 at memory speed, never the link.

Why a pass never counts on its own: the VM still runs, so whatever a pass sends may change again. Only the
last pass, once the VM is off (precopy.finish_precopy), makes the copy final, and the destination's digest of
its whole volume is checked against the source's as for any copy.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime

import structlog

from evacuator.errors import EvacuatorError
from evacuator.hypervisor.model import Hypervisor, VolumeInfo, VolumeRef
from evacuator.migrate.precopy import Settling, changed_blocks
from evacuator.migrate.steps import PrecopiedVolume
from evacuator.migrate.volume_copy import clear_leftover, copy_volume, within
from evacuator.transfer.chunks import Chunk, HoleChunk, close_chunks
from evacuator.transfer.digests import BLOCK_BYTES, BlockDigest

log = structlog.get_logger(__name__)

Clock = Callable[[], datetime]
Stop = Callable[[], bool]


class PassStopped(EvacuatorError):
    """A first pass was told to stop (a due move wants its slot, or the move went on): its copy is removed."""


def first_pass(
    source: Hypervisor, destination: Hypervisor, volume: VolumeInfo, *, limit_seconds: float, clock: Clock,
    stop: Stop,
) -> PrecopiedVolume | None:
    """Copies the volume whole while its VM may run and keeps each block's digest. None when the volume cannot
    be read live here; a stopped or failed pass removes what it wrote (its end is unknown) and raises."""
    ref = VolumeRef(pool=volume.pool, volume=volume.volume)
    live = source.read_volume_live(ref.pool, ref.volume)
    if live is None:
        return None
    try:
        in_use = {r for vm in destination.list_vms() for r in vm.volumes}
        clear_leftover(destination, ref, in_use)
    except BaseException:
        close_chunks(live.chunks)
        raise
    settling = Settling(threading.Event())  # never set: nothing a window's pass reads is final
    digest = BlockDigest(keep_blocks=True)
    try:
        sent = copy_volume(source, destination, volume, limit_seconds=limit_seconds, clock=clock,
                           reading=settling.tap(_unless(stop, live.chunks)), digest=digest)
    except BaseException as exc:
        _remove(destination, ref)
        if stop():  # however the destination's writer reported the stop
            raise PassStopped("pre-copy pass stopped") from exc
        raise
    assert digest.blocks is not None
    return PrecopiedVolume(identity=live.identity, length_bytes=settling.length_bytes,
                           settled_bytes=settling.length_bytes, block_digests=tuple(digest.blocks),
                           bytes_written=sent.bytes_written)  # fmt: skip


def converge_volume(
    source: Hypervisor, destination: Hypervisor, ref: VolumeRef, earlier: PrecopiedVolume, *,
    limit_seconds: float, clock: Clock, stop: Stop, off: threading.Event | None = None,
    polled: Callable[[Iterator[Chunk]], Iterator[Chunk]] | None = None,
) -> PrecopiedVolume | None:
    """Reads the volume's file again from its start and writes the blocks that changed. Stopped midway, the
    blocks written so far count and the rest keep their earlier digests (a later pass reads them again).
    `off` (a shutdown's): reads that began once it was set are final, as in precopy.py. None when the
    pre-copy cannot go on (another file, a shorter one, the copy gone): the caller copies afresh."""
    live = source.read_volume_live(ref.pool, ref.volume)
    if live is None or live.identity != earlier.identity or destination.find_volume(ref.pool,
                                                                                     ref.volume) is None:
        if live is not None:
            close_chunks(live.chunks)
        log.info("precopy_unusable", host=source.name, pool=ref.pool, volume=ref.volume,
                 reason="the file or its copy is not the one pre-copied")
        return None
    digests = list(earlier.block_digests)
    settling = Settling(off or threading.Event())
    stopped = threading.Event()
    chunks = live.chunks if polled is None else polled(live.chunks)
    reading = settling.tap(_unless(lambda: stopped.is_set() or stop(), chunks, stopped))
    patches = within(limit_seconds, f"converging {ref.pool}/{ref.volume}",
                     changed_blocks(digests, 0, reading), clock)
    try:
        written = destination.patch_volume(ref.pool, ref.volume, patches)
    finally:
        close_chunks(reading)
    if not stopped.is_set() and settling.length_bytes < earlier.length_bytes:
        log.info("precopy_unusable", host=source.name, pool=ref.pool, volume=ref.volume,
                 reason="the file is shorter than the one pre-copied")
        return None
    length = max(settling.length_bytes, earlier.length_bytes)
    # A stopped pass settled nothing: what it did not read is as stale as before.
    settled = length if stopped.is_set() or settling.settled_bytes is None else settling.settled_bytes
    log.info("precopy_converged", host=source.name, pool=ref.pool, volume=ref.volume,
             read_bytes=settling.length_bytes, patched_bytes=written, stopped=stopped.is_set())
    return PrecopiedVolume(identity=earlier.identity, length_bytes=length, settled_bytes=settled,
                           block_digests=tuple(digests), bytes_written=earlier.bytes_written + written)


def _unless(stop: Stop, chunks: Iterator[Chunk], stopped: threading.Event | None = None) -> Iterator[Chunk]:
    """Passes chunks on until `stop()`: then ends them quietly (`stopped` set), or raises PassStopped. A quiet
    end waits for the end of the block under way: a later pass's blocks are digested whole (changed_blocks),
    and a block cut short would count as changed, its digest kept wrong until the next pass."""
    offset = 0
    try:
        for chunk in chunks:
            if (stopped is None or offset % BLOCK_BYTES == 0) and stop():
                if stopped is None:
                    raise PassStopped("pre-copy pass stopped")
                stopped.set()
                return
            yield chunk
            offset += chunk.length_bytes if isinstance(chunk, HoleChunk) else len(chunk.data)
    finally:
        close_chunks(chunks)


def _remove(destination: Hypervisor, ref: VolumeRef) -> None:
    try:
        if destination.find_volume(ref.pool, ref.volume) is not None:
            destination.delete_volume(ref.pool, ref.volume)
    except EvacuatorError as exc:  # the next pass, or the move's own copy, clears it as a leftover
        log.warning("precopy_leftover_kept", host=destination.name, pool=ref.pool, volume=ref.volume,
                    error=str(exc))


def converge_during_shutdown(
    source: Hypervisor, destination: Hypervisor, earlier: dict[VolumeRef, PrecopiedVolume], *,
    off: threading.Event, polled: Callable[[Iterator[Chunk]], Iterator[Chunk]],
    limit_for: Callable[[VolumeInfo], float], clock: Clock,
) -> dict[VolumeRef, PrecopiedVolume]:
    """One more pass over each volume a window pre-copied, while its VM shuts down: what its guest changed
    since then travels now, and what is read once it is off is final. A volume whose pass fails or cannot go
    on is left out (it is copied afresh once the VM is off)."""
    converged: dict[VolumeRef, PrecopiedVolume] = {}
    for ref, precopied in earlier.items():
        try:
            volume = source.find_volume(ref.pool, ref.volume)
            if volume is None:
                continue
            result = converge_volume(source, destination, ref, precopied, limit_seconds=limit_for(volume),
                                     clock=clock, stop=lambda: False, off=off, polled=polled)
        except EvacuatorError as exc:
            log.warning("precopy_abandoned", pool=ref.pool, volume=ref.volume, error=str(exc))
            continue
        if result is not None:
            converged[ref] = result
    return converged


class StoredDigests:
    """The destination's digest of each pre-copied volume, taken on a thread of its own while the source reads
    its volumes for the last pass once the VM is off: the two reads, on two hosts, overlap. The caller keeps
    only the digests of copies the last pass wrote nothing to."""

    def __init__(self, destination: Hypervisor, volumes: Iterable[VolumeRef]) -> None:
        self._destination = destination
        self._volumes = tuple(volumes)
        self._digests: dict[VolumeRef, str] = {}
        self._thread = threading.Thread(target=self._run, name="evacuator-stored-digests", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for ref in self._volumes:
            try:
                self._digests[ref] = self._destination.volume_digest(ref.pool, ref.volume)
            except EvacuatorError as exc:  # the verification digests it again itself
                log.info("stored_digest_skipped", pool=ref.pool, volume=ref.volume, error=str(exc)[:300])

    def results(self, refs: Iterable[VolumeRef]) -> dict[VolumeRef, str]:
        self._thread.join()
        return {ref: self._digests[ref] for ref in refs if ref in self._digests}
