"""O_DIRECT on real files: the receiver's writer thread (aligned frames past the page cache, the rest through
it, the fallbacks when O_DIRECT is refused, a write's error raised where the frames are received), and a
file's block digest read past the cache, equal to the one read through it."""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from evacuator.transfer import direct_io, direct_writes
from evacuator.transfer.digests import block_digest_of_chunks
from evacuator.transfer.direct_io import block_digest_of_file
from evacuator.transfer.direct_writes import FrameWriter
from evacuator.transfer.files import file_chunks

MIB = 1 << 20
# (offset, bytes): aligned frames, then a tail whose length is not, and one whose offset is not.
FRAMES = [(0, os.urandom(MIB)), (2 * MIB, os.urandom(8192)), (3 * MIB, os.urandom(1000)),
          (3 * MIB + 5000, os.urandom(4096))]
ALIGNED_BYTES = MIB + 8192


@pytest.fixture
def fd(tmp_path: Path) -> Iterator[int]:
    opened = os.open(tmp_path / "volume", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    yield opened
    os.close(opened)


def _write(fd: int, frames: list[tuple[int, bytes]]) -> FrameWriter:
    with FrameWriter(fd, buffer_bytes=2 * MIB, writeback_every_bytes=MIB) as writer:
        for offset, data in frames:
            buffer = writer.buffer()
            buffer[:len(data)] = data
            writer.submit(buffer, offset, len(data))
        writer.finish()
    return writer


def _expected(frames: list[tuple[int, bytes]]) -> bytes:
    content = bytearray(max(offset + len(data) for offset, data in frames))
    for offset, data in frames:
        content[offset:offset + len(data)] = data
    return bytes(content)


def _direct_on(fd: int) -> bool:
    return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)


def test_aligned_frames_bypass_the_page_cache_and_the_rest_goes_through_it(fd: int, tmp_path: Path) -> None:
    writer = _write(fd, FRAMES)
    assert writer.direct_bytes == ALIGNED_BYTES
    assert (tmp_path / "volume").read_bytes() == _expected(FRAMES)
    assert not _direct_on(fd)  # the descriptor is left as it came, for the fsync and whoever reads it


def test_more_frames_than_buffers_wait_for_a_free_one_and_all_arrive(fd: int, tmp_path: Path) -> None:
    frames = [(n * MIB, os.urandom(MIB)) for n in range(12)]  # 4 times the writer's buffers
    writer = _write(fd, frames)
    assert writer.direct_bytes == 12 * MIB
    assert (tmp_path / "volume").read_bytes() == _expected(frames)


def test_a_file_system_without_o_direct_takes_every_frame_through_the_page_cache(
    fd: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(fd: int, on: bool) -> bool:
        return False  # what fcntl's EINVAL for O_DIRECT means: this file system has none

    monkeypatch.setattr(direct_writes, "set_direct", refused)
    writer = _write(fd, FRAMES)
    assert writer.direct_bytes == 0
    assert (tmp_path / "volume").read_bytes() == _expected(FRAMES)


def test_a_device_that_refuses_the_alignment_gets_the_rest_through_the_page_cache(
    fd: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_pwrite = os.pwrite

    def large_blocks(fd: int, data: memoryview, offset: int) -> int:
        if _direct_on(fd):  # a disk with 64 KiB blocks refuses 4 KiB-aligned direct writes
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", large_blocks)
    with capture_logs() as logs:
        writer = _write(fd, FRAMES)
    assert writer.direct_bytes == 0
    assert (tmp_path / "volume").read_bytes() == _expected(FRAMES)
    assert [event["event"] for event in logs] == ["direct_writes_refused"]  # once, not per frame
    assert not _direct_on(fd)


def test_a_failed_write_is_raised_to_the_receiving_thread(tmp_path: Path) -> None:
    path = tmp_path / "volume"
    path.write_bytes(b"")
    read_only = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # every write fails (EBADF), as a full disk would
    try:
        with pytest.raises(OSError) as failed:
            _write(read_only, [(n * MIB, os.urandom(MIB)) for n in range(6)])
        assert failed.value.errno == errno.EBADF
    finally:
        os.close(read_only)
    assert path.read_bytes() == b""


def _file(path: Path, size_bytes: int, data: list[tuple[int, bytes]]) -> Path:
    with path.open("wb") as file:
        file.truncate(size_bytes)
        for offset, content in data:
            file.seek(offset)
            file.write(content)
    return path


@pytest.mark.parametrize(("size_bytes", "data"), [
    (0, []),
    (9 * MIB, [(0, os.urandom(9 * MIB))]),  # dense, more than two reads of 4 MiB
    (20 * MIB, [(MIB + 8192, os.urandom(5 * MIB)), (12 * MIB, os.urandom(4096))]),  # holes between
    (3 * MIB + 1000, [(0, os.urandom(3 * MIB + 1000))]),  # an unaligned tail
    (6 * MIB, [(5 * MIB, b"x" * 10)]),  # a short extent near the end, then a hole
])
def test_a_files_digest_read_past_the_page_cache_equals_the_one_read_through_it(
    tmp_path: Path, size_bytes: int, data: list[tuple[int, bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _file(tmp_path / "volume", size_bytes, data)
    expected = block_digest_of_chunks(file_chunks(path))
    real_preadv, direct_reads = os.preadv, []

    def watched(fd: int, buffers: list[memoryview], offset: int) -> int:
        direct_reads.append(_direct_on(fd))
        return real_preadv(fd, buffers, offset)

    monkeypatch.setattr(os, "preadv", watched)
    assert block_digest_of_file(path) == expected
    assert all(direct_reads) and len(direct_reads) >= len(data)  # every read past the cache


def test_a_file_system_without_o_direct_gets_the_same_digest_through_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _file(tmp_path / "volume", 6 * MIB, [(0, os.urandom(5 * MIB + 3))])
    expected = block_digest_of_chunks(file_chunks(path))
    monkeypatch.setattr(direct_io, "set_direct", lambda fd, on: False)
    assert block_digest_of_file(path) == expected


def test_a_device_that_refuses_direct_reads_gets_the_same_digest_through_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _file(tmp_path / "volume", 9 * MIB, [(0, os.urandom(9 * MIB))])
    expected = block_digest_of_chunks(file_chunks(path))
    real_preadv = os.preadv

    def large_blocks(fd: int, buffers: list[memoryview], offset: int) -> int:
        if _direct_on(fd):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_preadv(fd, buffers, offset)

    monkeypatch.setattr(os, "preadv", large_blocks)
    with capture_logs() as logs:
        assert block_digest_of_file(path) == expected
    assert [event["event"] for event in logs] == ["direct_reads_refused"]
