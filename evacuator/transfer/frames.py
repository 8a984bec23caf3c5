"""A transfer's frames written into its volume's file: each run of data at its offset, within the volume's
limit (the frames: wire.py; the writes: direct_writes.py)."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

from evacuator.transfer.direct_writes import FrameWriter
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
    """Writes DATA frames at their offsets until END, never past `limit_bytes`, each frame received into a
    buffer while the one before is written (direct_writes.py); `floor(bytes received so far)` may raise to
    stop a slow transfer. Returns the data bytes written."""
    received = 0
    with FrameWriter(fd, buffer_bytes=MAX_FRAME_BYTES, writeback_every_bytes=writeback_every_bytes) as writer:
        while True:
            kind = receive_exactly(conn, 1)
            if kind == END:
                total_bytes, sent_bytes = END_BODY.unpack(receive_exactly(conn, END_BODY.size))
                _within(limit_bytes, total_bytes)
                if sent_bytes != received:
                    raise ChannelError(f"the sender sent {sent_bytes} bytes, {received} arrived")
                writer.finish()
                os.ftruncate(fd, total_bytes)
                return received
            if kind != DATA:
                raise ChannelError(f"unknown frame {kind!r}")
            offset, length = DATA_HEADER.unpack(receive_exactly(conn, DATA_HEADER.size))
            if length > MAX_FRAME_BYTES:
                raise ChannelError(f"a frame of {length} bytes exceeds {MAX_FRAME_BYTES}")
            _within(limit_bytes, offset + length)
            buffer = writer.buffer()
            receive_into(conn, buffer[:length])
            writer.submit(buffer, offset, length)
            received += length
            floor(received)


def _within(limit_bytes: int, end_bytes: int) -> None:
    if end_bytes > limit_bytes:
        raise ChannelError(f"writing up to byte {end_bytes} would pass the volume's limit of {limit_bytes}")
