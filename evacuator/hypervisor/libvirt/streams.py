"""Volume bytes over libvirt streams, and whether a volume's file is the one this process sees."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import libvirt

from evacuator.errors import HypervisorError
from evacuator.transfer.chunks import Chunk, DataChunk, HoleChunk
from evacuator.transfer.files import file_identity, write_in_runs

# libvirt carries stream data in messages of at most 256 KiB: asking for more buys nothing.
_STREAM_CHUNK_BYTES = 256 * 1024


def download_chunks(
    conn: Any, vol: Any, *, host: str, offset_bytes: int = 0, length_bytes: int = 0
) -> Iterator[Chunk]:
    """A sparse download (of `length_bytes` from `offset_bytes`; 0: to the end), aborted if the reader stops
    early (an open one keeps the volume "in use", which blocks deleting it)."""
    finished = False
    stream = conn.newStream(0)
    vol.download(stream, offset_bytes, length_bytes, libvirt.VIR_STORAGE_VOL_DOWNLOAD_SPARSE_STREAM)
    try:
        while True:
            got = stream.recvFlags(_STREAM_CHUNK_BYTES, libvirt.VIR_STREAM_RECV_STOP_AT_HOLE)
            if got == -3:
                yield HoleChunk(length_bytes=int(stream.recvHole(0)))
            elif isinstance(got, bytes) and got:
                yield DataChunk(data=got)
            elif isinstance(got, bytes):
                break
            else:
                raise HypervisorError(f"host {host}: unexpected stream answer {got!r}")
        stream.finish()
        finished = True
    finally:
        if not finished:
            abort_quietly(stream)


def upload_chunks(conn: Any, vol: Any, chunks: Iterable[Chunk], *, coalesce_hole_bytes: int = 1 << 20) -> int:
    """Onto a freshly created volume: one plain upload per run of data (a sparse upload costs the daemon
    four times the CPU), holes skipped, a trailing hole sent as a hole to set the length. A hole of at most
    `coalesce_hole_bytes` inside a run is sent as zeros (0: never, for a volume whose holes hold data)."""

    def open_run(offset: int) -> _StreamRun:
        stream = conn.newStream(0)
        vol.upload(stream, offset, 0, 0)
        return _StreamRun(stream)

    def extend(offset: int, length_bytes: int) -> None:
        stream = conn.newStream(0)
        vol.upload(stream, offset, 0, libvirt.VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM)
        try:
            stream.sendHole(length_bytes, 0)
            stream.finish()
        except BaseException:
            abort_quietly(stream)
            raise

    return write_in_runs(chunks, open_run=open_run, extend=extend, coalesce_hole_bytes=coalesce_hole_bytes)


def patch_chunks(patches: Iterable[tuple[int, bytes]]) -> Iterator[Chunk]:
    """(offset, bytes) writes in ascending order as a chunk stream from offset 0, the bytes between them as
    holes (which an upload skips, leaving them as they are)."""
    at = 0
    for offset, data in patches:
        if offset < at:
            raise HypervisorError(f"patches out of order: byte {offset} after byte {at}")
        if offset > at:
            yield HoleChunk(length_bytes=offset - at)
        yield DataChunk(data=data)
        at = offset + len(data)


def seen_file(volume_xml: str) -> tuple[Path, int, int] | None:
    """The volume's file as (path, size, mtime in ns) when this process sees the very file libvirt does (same
    size and modification time, which libvirt re-reads for the XML), else None."""
    seen = seen_file_stat(volume_xml)
    return None if seen is None else seen[0]


def seen_file_stat(volume_xml: str) -> tuple[tuple[Path, int, int], os.stat_result] | None:
    """seen_file, with the stat of the file that passed the check."""
    identity = file_identity(volume_xml)
    if identity is None:
        return None
    path, size_bytes, mtime_ns = identity
    try:
        found = path.stat()
    except OSError:
        return None
    if not stat.S_ISREG(found.st_mode) or found.st_size != size_bytes or found.st_mtime_ns != mtime_ns:
        return None
    return identity, found


def file_id(device: int, inode: int) -> str:
    """A stored file's identity, as LiveRead and StoredFile carry it."""
    return f"{device}:{inode}"


class _StreamRun:
    """One plain upload stream, as transfer.files' Run."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def send(self, data: bytes) -> None:
        sent = int(self._stream.send(data))
        while sent < len(data):  # a blocking stream takes it all at once; a partial send is only resumed
            sent += int(self._stream.send(data[sent:]))

    def finish(self) -> None:
        self._stream.finish()

    def abort(self) -> None:
        abort_quietly(self._stream)


def abort_quietly(stream: Any) -> None:
    # The stream is already broken; the original error is what the caller needs to see.
    with suppress(libvirt.libvirtError):
        stream.abort()
