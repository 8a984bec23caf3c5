"""Reading and writing volume files past the page cache (O_DIRECT), where the file system allows it.

Why: on the lab's hosts, and on any host whose free memory is handed back to a hypervisor or is simply cold,
the page cache's fresh pages are what a copy costs. Measured (bench/bench_channel.py and its notes): 1 GiB
written through the cache and fsynced cost 1.5 to 2.5 s of CPU, with O_DIRECT 0.02 s at the disk's speed;
1 GiB not in the cache read and digested through it took 0.5 to 2.2 s and up to 2 s of CPU, with O_DIRECT
0.5 s and 0.08 s. A copy is read once and written once, so the cache gains it nothing.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
from pathlib import Path

import structlog

from evacuator.errors import HypervisorError
from evacuator.transfer.chunks import HoleChunk
from evacuator.transfer.digests import BLOCK_BYTES, BlockDigest
from evacuator.transfer.files import extents

log = structlog.get_logger(__name__)

# O_DIRECT needs offsets, lengths and memory aligned to the device's logical block: 4096 covers 512-byte
# and 4K-sector disks alike (mmap's buffers are page aligned). A device with larger blocks refuses
# (EINVAL), and the page cache takes the rest of that file's reads or writes.
ALIGN_BYTES = 4096
READ_BYTES = 4 << 20


def set_direct(fd: int, on: bool) -> bool:
    """Turns O_DIRECT on or off for `fd`; whether it is now on (False where the file system refuses it)."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT if on else flags & ~os.O_DIRECT)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        return False
    return on


def aligned(offset: int, length: int) -> bool:
    return offset % ALIGN_BYTES == 0 and length % ALIGN_BYTES == 0


def block_digest_of_file(path: Path) -> str:
    """What block_digest_of_chunks(file_chunks(path)) gives (holes are never read), the data read with
    O_DIRECT into one buffer where it can be. HypervisorError if the file shrinks while read."""
    digest = BlockDigest()
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    mapped = mmap.mmap(-1, READ_BYTES)
    buffer = memoryview(mapped)
    try:
        direct = set_direct(fd, True)
        for start, stop, is_data in extents(fd, 0, os.fstat(fd).st_size):
            if not is_data:
                digest.update(HoleChunk(length_bytes=stop - start))
                continue
            for offset in range(start, stop, READ_BYTES):
                take = min(stop - offset, READ_BYTES)
                got, direct = _read(fd, buffer, offset, take, direct=direct)
                if got < take:
                    raise HypervisorError(f"{path} shrank while it was read (at byte {offset + got})")
                _digest_blocks(digest, buffer[:take], offset)
    finally:
        buffer.release()
        mapped.close()
        os.close(fd)
    return digest.hexdigest()


def _read(fd: int, buffer: memoryview, offset: int, length: int, *, direct: bool) -> tuple[int, bool]:
    """(bytes read into `buffer`, at most `length`: fewer only at the file's end; whether O_DIRECT is still
    on). A direct read asks for whole blocks, which may run past `length` and the file's end."""
    if direct:
        if offset % ALIGN_BYTES == 0:
            whole_blocks = -(-length // ALIGN_BYTES) * ALIGN_BYTES
            try:
                return min(os.preadv(fd, [buffer[:whole_blocks]], offset), length), True
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                log.info("direct_reads_refused", error=str(exc))
        # An unaligned extent (a file system of 1 KiB blocks), or a refusal: the cache reads the rest.
        set_direct(fd, False)
    got = 0
    while got < length:
        n = os.preadv(fd, [buffer[got:length]], offset + got)
        if n == 0:
            break
        got += n
    return got, False


def _digest_blocks(digest: BlockDigest, data: memoryview, offset: int) -> None:
    """Feeds `data` (the file's bytes from `offset`) in pieces that end on block boundaries, as file_chunks
    yields them, so that whole blocks are hashed in place."""
    done = 0
    while done < len(data):
        end = min(len(data), ((offset + done) // BLOCK_BYTES + 1) * BLOCK_BYTES - offset)
        digest.update_data(data[done:end])
        done = end
