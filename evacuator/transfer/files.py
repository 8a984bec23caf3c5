"""Volume bytes by the cheapest honest path: a local file's extents, upload runs, and a prefetching thread.

Measured on the lab (bench/bench_migrate.py): a libvirt download costs the daemon about 1.8 s of CPU per GiB
and a sparse upload about 2.6 s, while a plain upload at an offset costs 0.7 s. So the source host, which is
local to the daemon, is read from its file; the destination receives one plain upload per run of data and
skips holes (a fresh volume is all holes already); and reading runs on its own thread while sending runs on
the caller's, so the disk, the hash and the network overlap.
"""

from __future__ import annotations

import ctypes
import errno
import os
import queue
import threading
from collections.abc import Callable, Generator, Iterable, Iterator
from pathlib import Path
from typing import Protocol
from xml.etree import ElementTree

import structlog

from evacuator.errors import HypervisorError
from evacuator.transfer.chunks import Chunk, DataChunk, HoleChunk, close_chunks

log = structlog.get_logger(__name__)

CHUNK_BYTES = 1 << 20
# A hole this small inside a run of data is sent as zeros: cheaper than ending one upload and opening another.
COALESCE_HOLE_BYTES = 1 << 20
_ZEROS = bytes(COALESCE_HOLE_BYTES)


def file_chunks(
    path: Path, *, chunk_bytes: int = CHUNK_BYTES, start_bytes: int = 0, end_bytes: int | None = None,
) -> Iterator[Chunk]:
    """A file's content as data and hole chunks, found with SEEK_DATA/SEEK_HOLE (holes are never read);
    from `start_bytes` to `end_bytes` (None: its end), HypervisorError if it ends before `end_bytes`.

    Data chunks end on `chunk_bytes` boundaries, so a block digest hashes them without re-buffering. A file
    that shrinks while read is an error: the VM is off, so something else is writing its disk."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        yield from _fd_chunks(fd, path, chunk_bytes, start_bytes, end_bytes)
    finally:
        os.close(fd)


class LiveFile:
    """file_chunks of a file whose VM may still be writing it (a pre-copy), from a descriptor opened at
    once: `identity` (device, inode) says which file the bytes come from, so that once the VM is off the
    caller can check it was the very file libvirt names. Each chunk is read only when asked for, never
    ahead, so what it holds is the file as it was at that moment. Close it (or read it to its end)."""

    def __init__(self, path: Path, *, chunk_bytes: int = CHUNK_BYTES) -> None:
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        found = os.fstat(self._fd)
        self.identity = (found.st_dev, found.st_ino)
        self._chunks: Generator[Chunk, None, None] = _fd_chunks(self._fd, path, chunk_bytes, 0, None)

    def __iter__(self) -> LiveFile:
        return self

    def __next__(self) -> Chunk:
        try:
            return next(self._chunks)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self._chunks.close()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _fd_chunks(fd: int, path: Path, chunk_bytes: int, start_bytes: int, end_bytes: int | None,
               ) -> Generator[Chunk, None, None]:
    size_bytes = os.fstat(fd).st_size
    if end_bytes is not None and end_bytes > size_bytes:
        raise HypervisorError(f"{path} ends at byte {size_bytes}, before byte {end_bytes}")
    end = size_bytes if end_bytes is None else end_bytes
    for start, stop, is_data in extents(fd, start_bytes, end):
        if not is_data:
            yield HoleChunk(length_bytes=stop - start)
            continue
        offset = start
        while offset < stop:
            take = min(stop, (offset // chunk_bytes + 1) * chunk_bytes) - offset
            data = os.pread(fd, take, offset)
            if len(data) != take:
                raise HypervisorError(f"{path} shrank while it was read (at byte {offset + len(data)})")
            yield DataChunk(data=data)
            offset += take


def flush_file(path: Path) -> None:
    """Writes the file's dirty pages to its disk (fsync), whoever wrote them (here: libvirtd's upload), and
    its directory's entry (a freshly created volume's name would otherwise not survive a power loss)."""
    _fsync(path, os.O_RDONLY)
    fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    """Makes the entries of `directory` durable: a new file's name survives a power loss only so."""
    _fsync(directory, os.O_RDONLY | os.O_DIRECTORY)


def _fsync(target: Path, flags: int) -> None:
    fd = os.open(target, flags | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as exc:
        raise HypervisorError(f"cannot flush {target} to disk: {exc.strerror}") from exc
    finally:
        os.close(fd)


_LIBC = ctypes.CDLL(None, use_errno=True)
_SYNC_FILE_RANGE = getattr(_LIBC, "sync_file_range", None)
if _SYNC_FILE_RANGE is not None:
    _SYNC_FILE_RANGE.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, length_bytes: int) -> None:
    """Starts writing a range's dirty pages to disk and returns (sync_file_range WRITE): the disk then
    writes while more arrives, instead of all at the final fsync, which alone guarantees durability. Where
    the call is missing or refused, nothing is lost but that overlap."""
    if _SYNC_FILE_RANGE is not None and length_bytes > 0:
        _SYNC_FILE_RANGE(fd, offset, length_bytes, _SYNC_FILE_RANGE_WRITE)


def extents(fd: int, start_bytes: int, size_bytes: int) -> Iterator[tuple[int, int, bool]]:
    """(start, end, is_data) ranges covering [start_bytes, size_bytes)."""
    offset = start_bytes
    while offset < size_bytes:
        try:
            data_at = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data after offset: the rest is one hole
                yield offset, size_bytes, False
                return
            if exc.errno == errno.EINVAL:  # a file system without SEEK_DATA: everything counts as data
                yield offset, size_bytes, True
                return
            raise
        if data_at >= size_bytes:
            yield offset, size_bytes, False
            return
        if data_at > offset:
            yield offset, data_at, False
        hole_at = min(os.lseek(fd, data_at, os.SEEK_HOLE), size_bytes)
        yield data_at, hole_at, True
        offset = hole_at


def file_identity(volume_xml: str) -> tuple[Path, int, int] | None:
    """A file volume's (path, physical size, mtime in ns) from its libvirt XML; None for other kinds."""
    root = ElementTree.fromstring(volume_xml)
    path = root.findtext("./target/path")
    physical = root.findtext("./physical")
    mtime = root.findtext("./target/timestamps/mtime")
    if root.get("type") != "file" or not path or physical is None or mtime is None:
        return None
    seconds, _, fraction = mtime.strip().partition(".")
    mtime_ns = int(seconds) * 1_000_000_000 + int((fraction or "0")[:9].ljust(9, "0"))
    return Path(path), int(physical), mtime_ns



class Run(Protocol):
    """One upload of contiguous bytes, opened at an offset of the destination volume."""

    def send(self, data: bytes) -> None: ...
    def finish(self) -> None: ...
    def abort(self) -> None: ...


def write_in_runs(
    chunks: Iterable[Chunk], *, open_run: Callable[[int], Run], extend: Callable[[int, int], None],
    coalesce_hole_bytes: int = COALESCE_HOLE_BYTES,
) -> int:
    """Writes chunks onto a fresh (all-hole) volume as runs of data; returns the data bytes sent.

    Holes are skipped, not written, except small ones inside a run (sent as zeros, see COALESCE_HOLE_BYTES).
    A trailing hole is handed to `extend(offset, length)` so the copy ends where the source ends."""
    offset = 0
    sent_bytes = 0
    run: Run | None = None
    trailing: tuple[int, int] | None = None
    try:
        for chunk in chunks:
            if isinstance(chunk, HoleChunk):
                if chunk.length_bytes == 0:
                    continue
                if run is not None and chunk.length_bytes <= coalesce_hole_bytes:
                    run.send(_ZEROS[:chunk.length_bytes])
                else:
                    if run is not None:
                        run.finish()
                        run = None
                    trailing = (offset, chunk.length_bytes) if trailing is None else trailing
                offset += chunk.length_bytes
                continue
            if not chunk.data:
                continue
            if run is None:
                run = open_run(offset)
                trailing = None
            run.send(chunk.data)
            sent_bytes += len(chunk.data)
            offset += len(chunk.data)
        if run is not None:
            run.finish()
            run = None
        if trailing is not None:
            start, _ = trailing
            extend(start, offset - start)
    except BaseException:
        if run is not None:
            run.abort()
        raise
    return sent_bytes


class _End:
    pass


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def prefetched(
    chunks: Iterator[Chunk], *, depth: int = 8, join_timeout_seconds: float = 30.0
) -> Iterator[Chunk]:
    """The same chunks, produced ahead on a thread (at most `depth` waiting), so that reading and hashing
    overlap with whatever the caller does with each chunk. Errors arrive in order, after the chunks before
    them. Closing early stops the producer at its next chunk and closes `chunks` on its thread (a
    generator may only be closed where it runs)."""
    ready: queue.Queue[Chunk | _End | _Failed] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Chunk | _End | _Failed) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for chunk in chunks:
                if not put(chunk):
                    return
            put(_End())
        except BaseException as exc:  # handed to the consumer, which raises it in its own thread
            put(_Failed(exc))
        finally:
            close_chunks(chunks)

    producer = threading.Thread(target=produce, name="evacuator-volume-read", daemon=True)
    producer.start()
    try:
        while True:
            item = ready.get()
            if isinstance(item, _End):
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
        producer.join(join_timeout_seconds)
        if producer.is_alive():
            # Blocked in a read of a host that stopped answering; keepalive ends it, the thread is a daemon.
            log.warning("volume_reader_lingers", waited_seconds=join_timeout_seconds)
