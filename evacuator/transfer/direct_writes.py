"""A transfer's writes into its volume's file, on a thread of their own, past the page cache where they can.

Aligned frames are written with O_DIRECT (why: direct_io.py) by a writer thread, while the receiving thread
decrypts the next frame into another buffer: the network, the cipher and the disk overlap. Measured with
bench/bench_channel.py: the receiver's CPU per GiB went from 1.56 to 0.75 s, and the TLS copy from 0.53 to
0.93 times cp+sync. A frame that is not aligned (a file's unaligned tail), or a file system that refuses
O_DIRECT, is written through the page cache as before, its writeback started as it goes. The final fsync,
which alone makes the copy durable, is the caller's either way.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import queue
import threading
from types import TracebackType

import structlog

from evacuator.transfer.direct_io import aligned, set_direct
from evacuator.transfer.files import start_writeback

log = structlog.get_logger(__name__)

BUFFERS = 3  # one being filled, one being written, one spare so the receiver rarely waits


class _Stop:
    pass


class FrameWriter:
    """Writes (offset, bytes) into `fd` on a thread, from buffers it lends out: take `buffer()`, fill a prefix
    of it, `submit` it. A write's error (a full disk: OSError ENOSPC) is raised by the next `buffer`,
    `submit` or `finish`. Use it as a context manager: leaving it stops the thread and frees the buffers."""

    def __init__(self, fd: int, *, buffer_bytes: int, writeback_every_bytes: int,
                 buffers: int = BUFFERS) -> None:
        self._fd = fd
        self._writeback_every_bytes = writeback_every_bytes
        self._maps = [mmap.mmap(-1, buffer_bytes) for _ in range(buffers)]
        self._free: queue.Queue[memoryview] = queue.Queue()
        for mapped in self._maps:
            self._free.put(memoryview(mapped))
        self._work: queue.Queue[tuple[memoryview, int, int] | _Flush | _Stop] = queue.Queue()
        self._error: BaseException | None = None
        self._direct = set_direct(fd, True)  # False where the file system refuses O_DIRECT
        self._fd_direct = self._direct
        self._unflushed: tuple[int, int] | None = None  # buffered bytes written since their writeback began
        self.direct_bytes = 0  # written past the page cache: the bench and tests show which path was taken
        self._thread = threading.Thread(target=self._run, name="evacuator-data-write", daemon=True)
        self._thread.start()

    def __enter__(self) -> FrameWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._work.put(_Stop())
        self._thread.join()
        self._use_direct(False)
        # Every view must be released before its map can close; those still queued are ours alone now.
        while not self._free.empty():
            self._free.get_nowait().release()
        for mapped in self._maps:
            with contextlib.suppress(BufferError):  # a view still held by a failed receive: freed by gc
                mapped.close()

    def buffer(self) -> memoryview:
        """A free buffer, once the writer has one (it waits for a write to finish when all are queued)."""
        while True:
            self._raise_failure()
            try:
                return self._free.get(timeout=0.5)
            except queue.Empty:
                continue

    def submit(self, buffer: memoryview, offset: int, length: int) -> None:
        """Queues `buffer[:length]` for writing at `offset`; the buffer comes back once it is written."""
        self._raise_failure()
        self._work.put((buffer, offset, length))

    def finish(self) -> None:
        """Waits until every submitted write is in the file (not yet durable: fsync is the caller's)."""
        flushed = _Flush()
        self._work.put(flushed)
        while not flushed.done.wait(0.5):
            self._raise_failure()
        self._raise_failure()

    def _raise_failure(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while True:
            item = self._work.get()
            if isinstance(item, _Stop):
                return
            if isinstance(item, _Flush):
                item.done.set()
                continue
            buffer, offset, length = item
            if self._error is None:
                try:
                    self._write(buffer, offset, length)
                except BaseException as exc:  # the receiving thread raises it
                    self._error = exc
            self._free.put(buffer)

    def _write(self, buffer: memoryview, offset: int, length: int) -> None:
        direct = self._direct and aligned(offset, length)
        self._use_direct(direct)
        if direct:
            try:
                _pwrite_all(self._fd, buffer[:length], offset)
                self.direct_bytes += length
                return
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                # A device with larger blocks than we align to: the page cache takes the rest of this copy.
                log.info("direct_writes_refused", error=str(exc))
                self._direct = False
                self._use_direct(False)
        _pwrite_all(self._fd, buffer[:length], offset)
        unflushed = self._unflushed
        start = offset if unflushed is None else min(unflushed[0], offset)
        end = offset + length if unflushed is None else max(offset + length, unflushed[1])
        self._unflushed = (start, end)
        if end - start >= self._writeback_every_bytes:
            start_writeback(self._fd, start, end - start)
            self._unflushed = None

    def _use_direct(self, on: bool) -> None:
        if self._fd_direct != on:
            self._fd_direct = set_direct(self._fd, on)


class _Flush:
    def __init__(self) -> None:
        self.done = threading.Event()


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    done = 0
    while done < len(data):  # a regular file takes it all unless the disk fills (then OSError ENOSPC)
        done += os.pwrite(fd, data[done:], offset + done)
