"""Volume I/O: a local file's extents, writing runs onto a fresh volume, and the prefetching thread."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evacuator.errors import HypervisorError
from evacuator.transfer.chunks import Chunk, DataChunk, HoleChunk
from evacuator.transfer.files import LiveFile, file_chunks, file_identity, prefetched, write_in_runs

MIB = 1 << 20


def _content(chunks: list[Chunk]) -> bytes:
    return b"".join(c.data if isinstance(c, DataChunk) else bytes(c.length_bytes) for c in chunks)


def _sparse_file(path: Path, size_bytes: int, writes: dict[int, bytes]) -> bytes:
    with path.open("wb") as out:
        out.truncate(size_bytes)
        for offset, data in writes.items():
            out.seek(offset)
            out.write(data)
    return path.read_bytes()


def _supports_holes(path: Path) -> bool:
    return os.stat(path).st_blocks * 512 < os.stat(path).st_size


def test_file_chunks_read_data_extents_only_and_skip_holes(tmp_path: Path) -> None:
    path = tmp_path / "disk.raw"
    expected = _sparse_file(path, 16 * MIB, {3 * MIB + 5: os.urandom(MIB + MIB // 2), 15 * MIB: b"tail"})
    assert _supports_holes(path), "the test needs a file system with holes (ext4, xfs, tmpfs)"

    chunks = list(file_chunks(path))

    assert _content(chunks) == expected
    holes = sum(c.length_bytes for c in chunks if isinstance(c, HoleChunk))
    data = sum(len(c.data) for c in chunks if isinstance(c, DataChunk))
    assert holes + data == 16 * MIB
    assert data <= 3 * MIB  # file-system blocks around the writes, never the 13 MiB of holes
    offset = 0
    for chunk in chunks:  # data pieces never cross a MiB boundary: a block digest takes them whole
        if isinstance(chunk, DataChunk):
            assert offset // MIB == (offset + len(chunk.data) - 1) // MIB
            offset += len(chunk.data)
        else:
            offset += chunk.length_bytes


@pytest.mark.parametrize(("size_bytes", "writes"), [
    (0, {}),
    (8 * MIB, {}),
    (4 * MIB, {0: b"head"}),
    (3 * MIB + 7, {3 * MIB: b"1234567"}),
    (2 * MIB, {0: os.urandom(2 * MIB)}),
])  # fmt: skip
def test_file_chunks_cover_the_whole_file(tmp_path: Path, size_bytes: int, writes: dict[int, bytes]) -> None:
    path = tmp_path / "disk.raw"
    expected = _sparse_file(path, size_bytes, writes)
    assert _content(list(file_chunks(path))) == expected


@pytest.mark.parametrize(("start", "end"), [
    (0, 16 * MIB), (3 * MIB, 5 * MIB), (3 * MIB + 5, 4 * MIB + 1), (6 * MIB, 15 * MIB + 4),
    (8 * MIB, 8 * MIB),
])  # fmt: skip
def test_file_chunks_read_a_range_of_the_file(tmp_path: Path, start: int, end: int) -> None:
    path = tmp_path / "disk.raw"
    expected = _sparse_file(path, 16 * MIB, {3 * MIB + 5: os.urandom(MIB + MIB // 2), 15 * MIB: b"tail"})
    assert _content(list(file_chunks(path, start_bytes=start, end_bytes=end))) == expected[start:end]


def test_file_chunks_refuse_a_range_past_the_end_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "disk.raw"
    _sparse_file(path, 2 * MIB, {})
    with pytest.raises(HypervisorError, match="ends at byte 2097152, before byte 2097153"):
        list(file_chunks(path, start_bytes=MIB, end_bytes=2 * MIB + 1))


def test_a_live_file_reads_each_chunk_when_asked_and_names_its_file(tmp_path: Path) -> None:
    path = tmp_path / "disk.raw"
    _sparse_file(path, 0, {0: bytes(3 * MIB)})
    live = LiveFile(path)
    assert live.identity == (os.stat(path).st_dev, os.stat(path).st_ino)
    first = next(live)
    with path.open("r+b") as guest:  # a write after the first chunk was read shows in the next ones only
        guest.write(b"early")
        guest.seek(2 * MIB)
        guest.write(b"late")
    rest = list(live)
    assert isinstance(first, DataChunk) and first.data[:5] == bytes(5)
    assert _content(rest)[MIB : MIB + 4] == b"late"
    live.close()  # twice is harmless: reading to the end closed it already


def test_file_chunks_fail_loudly_when_the_file_shrinks_under_them(tmp_path: Path) -> None:
    path = tmp_path / "disk.raw"
    _sparse_file(path, 0, {0: os.urandom(4 * MIB)})
    chunks = file_chunks(path)
    next(chunks)
    os.truncate(path, MIB + 10)
    with pytest.raises(HypervisorError, match="shrank"):
        list(chunks)


class _Volume:
    """A fresh destination volume: all zeros until written; records every run opened."""

    def __init__(self, size_bytes: int) -> None:
        self.content = bytearray(size_bytes)
        self.runs: list[int] = []
        self.aborted = 0
        self.extended: list[tuple[int, int]] = []

    def open_run(self, offset: int) -> _Run:
        self.runs.append(offset)
        return _Run(self, offset)

    def extend(self, offset: int, length_bytes: int) -> None:
        self.extended.append((offset, length_bytes))
        if offset + length_bytes > len(self.content):
            self.content.extend(bytes(offset + length_bytes - len(self.content)))


class _Run:
    def __init__(self, volume: _Volume, offset: int) -> None:
        self._volume, self._offset, self.finished = volume, offset, False

    def send(self, data: bytes) -> None:
        end = self._offset + len(data)
        if end > len(self._volume.content):
            self._volume.content.extend(bytes(end - len(self._volume.content)))
        self._volume.content[self._offset:end] = data
        self._offset = end

    def finish(self) -> None:
        self.finished = True

    def abort(self) -> None:
        self._volume.aborted += 1


_chunk = st.one_of(
    st.builds(lambda n: HoleChunk(length_bytes=n), st.sampled_from([0, 1, 4096, MIB, MIB + 1, 5 * MIB])),
    st.builds(lambda b: DataChunk(data=b), st.binary(min_size=0, max_size=3000)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_chunk, max_size=12))
def test_write_in_runs_reproduces_the_content_and_sends_no_large_hole(chunks: list[Chunk]) -> None:
    expected = _content(chunks)
    volume = _Volume(0)  # shorter than the source, as a fresh qcow2 file is: the trailing hole extends it

    sent = write_in_runs(chunks, open_run=volume.open_run, extend=volume.extend)

    assert bytes(volume.content) == expected
    assert sent == sum(len(c.data) for c in chunks if isinstance(c, DataChunk))
    large_holes = sum(1 for c in chunks if isinstance(c, HoleChunk) and c.length_bytes > MIB)
    data_chunks = sum(1 for c in chunks if isinstance(c, DataChunk) and c.data)
    assert len(volume.runs) <= min(data_chunks, large_holes + 1 + sum(
        1 for c in chunks if isinstance(c, HoleChunk) and 0 < c.length_bytes <= MIB))


def test_write_in_runs_skips_large_holes_and_coalesces_small_ones() -> None:
    volume = _Volume(64 * MIB)
    chunks: list[Chunk] = [DataChunk(data=b"a" * 10), HoleChunk(length_bytes=4096), DataChunk(data=b"b"),
                           HoleChunk(length_bytes=32 * MIB), DataChunk(data=b"c"),
                           HoleChunk(length_bytes=64 * MIB - 32 * MIB - 4096 - 12)]
    write_in_runs(chunks, open_run=volume.open_run, extend=volume.extend)
    assert volume.runs == [0, 10 + 4096 + 1 + 32 * MIB]
    assert volume.extended == [(10 + 4096 + 1 + 32 * MIB + 1, 64 * MIB - 32 * MIB - 4096 - 12)]
    assert bytes(volume.content) == _content(chunks)


def test_write_in_runs_aborts_the_open_run_when_the_source_fails() -> None:
    volume = _Volume(MIB)

    def failing() -> Iterator[Chunk]:
        yield DataChunk(data=b"x" * 100)
        raise HypervisorError("source went away")

    with pytest.raises(HypervisorError, match="went away"):
        write_in_runs(failing(), open_run=volume.open_run, extend=volume.extend)
    assert volume.aborted == 1


def test_prefetched_passes_every_chunk_in_order_then_the_error() -> None:
    def source() -> Iterator[Chunk]:
        for index in range(50):
            yield DataChunk(data=bytes([index]))
        raise HypervisorError("read failed at 50")

    seen: list[int] = []
    with pytest.raises(HypervisorError, match="at 50"):
        for chunk in prefetched(source(), depth=4):
            assert isinstance(chunk, DataChunk)
            seen.append(chunk.data[0])
    assert seen == list(range(50))


def test_prefetched_reads_ahead_at_most_its_depth() -> None:
    produced = 0

    def source() -> Iterator[Chunk]:
        nonlocal produced
        for _ in range(100):
            produced += 1
            yield DataChunk(data=b"x")

    ahead = prefetched(source(), depth=3)
    next(ahead)
    time.sleep(0.3)
    assert produced <= 1 + 3 + 1  # the one taken, the queue, and the one waiting to be queued
    assert len(list(ahead)) == 99


def test_closing_prefetched_early_closes_the_source_on_its_own_thread() -> None:
    closed_on: list[str] = []

    def source() -> Iterator[Chunk]:
        try:
            while True:
                yield DataChunk(data=b"x")
        finally:
            closed_on.append(threading.current_thread().name)

    ahead = prefetched(source(), depth=2)
    next(ahead)
    ahead.close()  # type: ignore[attr-defined]
    assert closed_on == ["evacuator-volume-read"]
    assert not any(t.name == "evacuator-volume-read" for t in threading.enumerate())


VOLUME_XML = """<volume type='file'><name>d.raw</name><capacity unit='bytes'>67108864</capacity>
<allocation unit='bytes'>204800</allocation><physical unit='bytes'>8388608</physical>
<target><path>/pool/d.raw</path><format type='raw'/><timestamps><atime>1795586407.285646756</atime>
<mtime>1795586407.0854</mtime></timestamps></target></volume>"""


def test_file_identity_reads_path_size_and_nanosecond_mtime() -> None:
    assert file_identity(VOLUME_XML) == (Path("/pool/d.raw"), 8388608, 1795586407_085400000)
    assert file_identity(VOLUME_XML.replace("type='file'", "type='block'")) is None
    assert file_identity(VOLUME_XML.replace("<physical unit='bytes'>8388608</physical>", "")) is None
