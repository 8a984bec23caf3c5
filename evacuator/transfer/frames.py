"""A transfer's frames written into its volume's file: each run of data at its offset, within the volume's
limit, the writeback started as it goes (the frames: wire.py)."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

from evacuator.transfer.files import start_writeback
from evacuator.transfer.wire import (
    DATA,
    DATA_HEADER,
    END,
    END_BODY,
    MAX_FRAME_BYTES,
    ChannelError,
    receive_exactly,
    receive_into,
)


def write_frames(conn: socket.socket, fd: int, *, limit_bytes: int, floor: Callable[[int], None],
                 writeback_every_bytes: int) -> int:
    """Writes DATA frames at their offsets until END, never past `limit_bytes`, starting the writeback of
    every `writeback_every_bytes`; `floor(bytes written so far)` may raise to stop a slow transfer. Returns
    the data bytes written."""
    buffer = memoryview(bytearray(MAX_FRAME_BYTES))
    written = 0
    unflushed: tuple[int, int] | None = None  # (start, end) written since the last writeback began
    while True:
        kind = receive_exactly(conn, 1)
        if kind == END:
            total_bytes, sent_bytes = END_BODY.unpack(receive_exactly(conn, END_BODY.size))
            _within(limit_bytes, total_bytes)
            if sent_bytes != written:
                raise ChannelError(f"the sender sent {sent_bytes} bytes, {written} arrived")
            os.ftruncate(fd, total_bytes)
            return written
        if kind != DATA:
            raise ChannelError(f"unknown frame {kind!r}")
        offset, length = DATA_HEADER.unpack(receive_exactly(conn, DATA_HEADER.size))
        if length > MAX_FRAME_BYTES:
            raise ChannelError(f"a frame of {length} bytes exceeds {MAX_FRAME_BYTES}")
        _within(limit_bytes, offset + length)
        receive_into(conn, buffer[:length])
        done = 0
        while done < length:  # a regular file takes it all unless the disk fills (then OSError ENOSPC)
            done += os.pwrite(fd, buffer[done:length], offset + done)
        written += length
        floor(written)
        start = offset if unflushed is None else min(unflushed[0], offset)
        unflushed = (start, max(offset + length, 0 if unflushed is None else unflushed[1]))
        if unflushed[1] - unflushed[0] >= writeback_every_bytes:
            start_writeback(fd, unflushed[0], unflushed[1] - unflushed[0])
            unflushed = None


def _within(limit_bytes: int, end_bytes: int) -> None:
    if end_bytes > limit_bytes:
        raise ChannelError(f"writing up to byte {end_bytes} would pass the volume's limit of {limit_bytes}")
