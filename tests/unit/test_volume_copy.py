"""copy_volume against in-memory hypervisors: exact copy and digest, format kept, a stalled copy stopped."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from evacuator.migrate.volume_copy import CopyStalled, copy_volume
from evacuator.transfer.chunks import DataChunk
from evacuator.transfer.digests import block_digest_of_chunks
from tests.fakes.hypervisor import FakeHypervisor

POOL = "evacuator"
BLOCK_BYTES = 4096  # the fake's block: its reads split data and holes at this granularity
MIB = 1 << 20
T0 = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)


def _hosts(data: bytes, capacity_bytes: int, fmt: str = "raw") -> tuple[FakeHypervisor, FakeHypervisor]:
    source, destination = FakeHypervisor(name="a"), FakeHypervisor(name="b")
    source.add_volume(POOL, "disk", capacity_bytes=capacity_bytes, data=data, format=fmt)
    return source, destination


def test_the_copy_is_exact_keeps_the_format_and_reports_what_it_sent() -> None:
    data = bytes(range(256)) * 4096 + b"tail"  # 1 MiB and 4 bytes of data, the rest of 3 MiB a hole
    source, destination = _hosts(data, 3 * MIB, fmt="qcow2")
    info = source.find_volume(POOL, "disk")
    assert info is not None

    copied = copy_volume(source, destination, info, limit_seconds=60, clock=lambda: T0)

    assert destination.volume_bytes(POOL, "disk") == source.volume_bytes(POOL, "disk")
    copy = destination.find_volume(POOL, "disk")
    assert copy is not None and copy.format == "qcow2" and copy.capacity_bytes == 3 * MIB
    expected = block_digest_of_chunks([DataChunk(data=data + bytes(3 * MIB - len(data)))])
    assert copied.sent_digest == expected == destination.volume_digest(POOL, "disk")
    assert len(data) <= copied.bytes_written < 3 * MIB


def test_a_copy_slower_than_its_limit_is_stopped() -> None:
    data = (bytes([7]) * BLOCK_BYTES + bytes(BLOCK_BYTES)) * 4  # data and holes in turn: 8 chunks
    source, destination = _hosts(data, len(data))
    info = source.find_volume(POOL, "disk")
    assert info is not None
    ticks = iter(T0 + timedelta(seconds=40 * n) for n in range(100))  # each chunk takes 40 s

    with pytest.raises(CopyStalled, match="took over 60 s"):
        copy_volume(source, destination, info, limit_seconds=60, clock=lambda: next(ticks))
    # Left for the caller (the mover redoes or removes it): the partial copy is there, incomplete.
    assert destination.find_volume(POOL, "disk") is not None
    assert destination.volume_bytes(POOL, "disk") != source.volume_bytes(POOL, "disk")
