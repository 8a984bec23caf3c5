"""This host's daemon receiving a copy into its own volume file over the data channel (wire: data_wire.py).

What a ticket lets a peer do is bounded: write once, within one connection, into one volume of this host's
pool that no defined VM uses and that holds no data yet (`FRESH_LIMIT_BYTES`: a volume just created for the
copy), never past a raw volume's capacity. A mover holding libvirt access to this host could do all that
and more through libvirt; the channel is only faster.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import secrets
import socket
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from evacuator.data_wire import (
    DATA,
    DATA_HEADER,
    DONE,
    DONE_BODY,
    END,
    END_BODY,
    GO,
    MAGIC,
    MAX_FRAME_BYTES,
    TLS_HANDSHAKE,
    TOKEN_BYTES,
    ChannelError,
    ReceiveRequest,
    ReceiveTicket,
    ServerTls,
    error_frame,
    receive_exactly,
)
from evacuator.errors import EvacuatorError
from evacuator.volume_io import start_writeback

log = structlog.get_logger(__name__)

FRESH_LIMIT_BYTES = 1 << 20  # a fresh raw volume stores nothing; a fresh qcow2 its header (~200 KiB)
MAX_OPEN_TICKETS = 64
# Every this many bytes written, their writeback starts: the disk writes while the network delivers, and
# the final fsync finds little left (measured on the lab: 1 GiB durable in 0.60 s median instead of 0.80).
WRITEBACK_EVERY_BYTES = 8 << 20


@dataclass(frozen=True, slots=True, kw_only=True)
class ReceivableFile:
    """Where a volume's bytes go, and how far (None: a format whose file may outgrow its capacity)."""

    path: Path
    limit_bytes: int | None


FileLocator = Callable[[str, str], ReceivableFile]
"""(pool, volume) -> its file, when this host's pool holds it and no VM uses it; else EvacuatorError."""


@dataclass(frozen=True, slots=True, kw_only=True)
class _Ticket:
    pool: str
    volume: str
    path: Path
    # (st_dev, st_ino, st_ctime_ns) at issue: the same file, untouched since (an inode number is reused at
    # once after a delete, and a fresh volume is changed by nobody before its copy arrives).
    file_id: tuple[int, int, int]
    limit_bytes: int | None
    expires_at: float


class VolumeReceiver:
    """Listens for movers holding a ticket; each transfer runs on a thread of its own (at most
    `max_transfers` at once), and every read waits at most `stall_timeout_seconds`."""

    def __init__(
        self, *, host: str, locate: FileLocator, listen_address: str, port: int, tls: ServerTls,
        allow_clear: bool = False, advertise_address: str | None = None, stall_timeout_seconds: float = 60.0,
        max_transfers: int = 4, ticket_ttl_seconds: float = 60.0, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._host = host
        self._locate = locate
        self._listen = (listen_address, port)
        self._tls = tls
        self._allow_clear = allow_clear
        self._advertise_address = advertise_address
        self._stall_timeout_seconds = stall_timeout_seconds
        self._slots = threading.BoundedSemaphore(max_transfers)
        self._ticket_ttl_seconds = ticket_ttl_seconds
        self._clock = clock
        self._tickets: dict[bytes, _Ticket] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        # Transfers finished here: the tests and the bench show the copy took this path.
        self.received = 0

    @property
    def port(self) -> int:
        if self._listener is None:
            raise ChannelError("the receiver is not listening")
        return int(self._listener.getsockname()[1])

    def start(self) -> None:
        """Listens; ChannelError when the address cannot be bound (the daemon then fails to start)."""
        try:
            self._listener = socket.create_server(self._listen, reuse_port=False)
        except OSError as exc:
            raise ChannelError(f"data channel cannot listen on {self._listen[0]} port {self._listen[1]}: "
                               f"{exc.strerror}") from exc
        self._listener.settimeout(0.5)  # so close() is noticed
        self._thread = threading.Thread(target=self._accept_loop, name="evacuator-data-accept", daemon=True)
        self._thread.start()
        log.info("data_channel_listening", host=self._host, address=self._listen[0], port=self.port,
                 clear_allowed=self._allow_clear)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        if self._listener is not None:
            self._listener.close()

    def issue(self, request: ReceiveRequest) -> ReceiveTicket:
        """A ticket for the requested volume, or one that says why not. Safe from any thread."""

        def refuse(error: str) -> ReceiveTicket:
            log.warning("receive_ticket_refused", host=self._host, pool=request.pool, volume=request.volume,
                        error=error)
            return ReceiveTicket(host=self._host, pool=request.pool, volume=request.volume, error=error)

        if request.host != self._host:
            return refuse(f"this is {self._host}, not {request.host}")
        try:
            target = self._locate(request.pool, request.volume)
            found = os.stat(target.path, follow_symlinks=False)
        except (EvacuatorError, OSError) as exc:
            return refuse(str(exc))
        if not stat.S_ISREG(found.st_mode):
            return refuse(f"{target.path} is not a regular file")
        if found.st_blocks * 512 > FRESH_LIMIT_BYTES:
            return refuse(f"{request.pool}/{request.volume} holds data already: only a fresh volume is "
                          "written")
        token = secrets.token_bytes(TOKEN_BYTES)
        now = self._clock()
        with self._lock:
            self._tickets = {k: t for k, t in self._tickets.items() if t.expires_at > now}
            if len(self._tickets) >= MAX_OPEN_TICKETS:
                return refuse("too many tickets open")
            self._tickets[token] = _Ticket(
                pool=request.pool, volume=request.volume, path=target.path,
                file_id=(found.st_dev, found.st_ino, found.st_ctime_ns), limit_bytes=target.limit_bytes,
                expires_at=now + self._ticket_ttl_seconds)
        return ReceiveTicket(host=self._host, pool=request.pool, volume=request.volume, token=token.hex(),
                             port=self.port, address=self._advertise_address, tls_sha256=self._tls.sha256,
                             clear_allowed=self._allow_clear)

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                conn, peer = self._listener.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                log.error("data_channel_accept_failed", host=self._host, error=str(exc))
                self._stop.wait(1.0)
                continue
            if not self._slots.acquire(blocking=False):
                with contextlib.suppress(OSError):
                    conn.settimeout(1.0)
                    conn.sendall(error_frame("too many transfers at once"))
                conn.close()
                continue
            threading.Thread(target=self._serve, args=(conn, peer[0]), name="evacuator-data-receive",
                             daemon=True).start()

    def _serve(self, raw: socket.socket, peer: str) -> None:
        conn = raw
        ticket: _Ticket | None = None
        try:
            conn.settimeout(self._stall_timeout_seconds)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if raw.recv(1, socket.MSG_PEEK) == TLS_HANDSHAKE:
                conn = self._tls.context.wrap_socket(raw, server_side=True)
            elif not self._allow_clear:
                raise ChannelError("this host takes copies over TLS only")
            ticket = self._redeem(receive_exactly(conn, len(MAGIC) + TOKEN_BYTES))
            began = time.monotonic()
            written = self._receive_into(conn, ticket)
            conn.sendall(DONE + DONE_BODY.pack(written))
            with self._lock:
                self.received += 1
            log.info("volume_received", host=self._host, pool=ticket.pool, volume=ticket.volume, peer=peer,
                     bytes_written=written, seconds=round(time.monotonic() - began, 3))
        except (ChannelError, OSError) as exc:
            log.warning("volume_receive_failed", host=self._host, peer=peer, error=str(exc) or repr(exc),
                        pool=None if ticket is None else ticket.pool,
                        volume=None if ticket is None else ticket.volume)
            with contextlib.suppress(OSError, ValueError):
                conn.sendall(error_frame(str(exc) or repr(exc)))
        finally:
            conn.close()
            self._slots.release()

    def _redeem(self, hello: bytes) -> _Ticket:
        if not hmac.compare_digest(hello[:len(MAGIC)], MAGIC):
            raise ChannelError("not an evacuator data channel")
        offered = hello[len(MAGIC):]
        with self._lock:
            # compare_digest over every open ticket: which token is right must not show in the timing.
            match = next((t for t in self._tickets if hmac.compare_digest(t, offered)), None)
            ticket = None if match is None else self._tickets.pop(match)
        if ticket is None or ticket.expires_at <= self._clock():
            raise ChannelError("no such ticket (never issued, used already or expired)")
        return ticket

    def _receive_into(self, conn: socket.socket, ticket: _Ticket) -> int:
        fd = os.open(ticket.path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            found = os.fstat(fd)
            if (found.st_dev, found.st_ino, found.st_ctime_ns) != ticket.file_id:
                raise ChannelError(f"{ticket.path} was replaced or changed since the ticket was issued")
            conn.sendall(GO)
            os.ftruncate(fd, 0)  # an exact copy: no byte of the fresh file (a qcow2 header) outlives it
            written = _write_frames(conn, fd, ticket.limit_bytes)
            # Durable before DONE: the mover removes the source once the copy is verified.
            os.fsync(fd)
        finally:
            os.close(fd)
        directory = os.open(ticket.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        return written


def _write_frames(conn: socket.socket, fd: int, limit_bytes: int | None) -> int:
    """Writes DATA frames at their offsets until END; returns the data bytes written."""
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
        got = 0
        while got < length:
            n = conn.recv_into(buffer[got:length])
            if n == 0:
                raise ChannelError(f"the sender closed the channel after {written + got} bytes")
            got += n
        done = 0
        while done < length:  # a regular file takes it all unless the disk fills (then OSError ENOSPC)
            done += os.pwrite(fd, buffer[done:length], offset + done)
        written += length
        start = offset if unflushed is None else min(unflushed[0], offset)
        unflushed = (start, max(offset + length, 0 if unflushed is None else unflushed[1]))
        if unflushed[1] - unflushed[0] >= WRITEBACK_EVERY_BYTES:
            start_writeback(fd, unflushed[0], unflushed[1] - unflushed[0])
            unflushed = None


def _within(limit_bytes: int | None, end_bytes: int) -> None:
    if limit_bytes is not None and end_bytes > limit_bytes:
        raise ChannelError(f"writing up to byte {end_bytes} would pass the volume's capacity {limit_bytes}")
