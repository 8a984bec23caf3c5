"""This host's daemon receiving a copy into its own volume file over the data channel (wire: wire.py).

Who may write what is the ticket book's (tickets.py). Here: connections. One that has not shown a
valid ticket within `HELLO_TIMEOUT_SECONDS` is dropped, and at most `MAX_UNPROVEN` wait at once, so nobody
without a ticket holds a transfer slot. A transfer whose bytes stop for the stall timeout, or that falls
below `min_bytes_per_second` on average after that grace, is dropped too: no connection keeps a volume's
file open for long.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable

import structlog

from evacuator.errors import EvacuatorError
from evacuator.transfer.files import fsync_directory, start_writeback
from evacuator.transfer.tickets import FileLocator, Ticket, TicketBook
from evacuator.transfer.wire import (
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
    receive_into,
)

log = structlog.get_logger(__name__)

HELLO_TIMEOUT_SECONDS = 10.0
MAX_UNPROVEN = 16
# Every this many bytes written, their writeback starts: the disk writes while the network delivers, and
# the final fsync finds little left (measured on the lab: 1 GiB durable in 0.60 s median instead of 0.80).
WRITEBACK_EVERY_BYTES = 8 << 20


class VolumeReceiver:
    """Listens for movers holding a ticket; each connection runs on a thread of its own, at most
    `max_transfers` of them writing at once."""

    def __init__(
        self, *, host: str, locate: FileLocator, listen_address: str, port: int, tls: ServerTls,
        allow_clear: bool = False, advertise_address: str | None = None, stall_timeout_seconds: float = 60.0,
        min_bytes_per_second: float = 10 * 1024 * 1024, max_transfers: int = 4,
        ticket_ttl_seconds: float = 60.0, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._host = host
        self._book = TicketBook(locate=locate, ttl_seconds=ticket_ttl_seconds, clock=clock)
        self._listen = (listen_address, port)
        self._tls = tls
        self._allow_clear = allow_clear
        self._advertise_address = advertise_address
        self._stall_timeout_seconds = stall_timeout_seconds
        self._min_bytes_per_second = min_bytes_per_second
        self._slots = threading.BoundedSemaphore(max_transfers)
        self._unproven = threading.BoundedSemaphore(MAX_UNPROVEN)
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
            self._listener = socket.create_server(self._listen)
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
        self._book.close()

    def issue(self, request: ReceiveRequest) -> ReceiveTicket:
        """A ticket for the requested volume, or one that says why not. Safe from any thread."""
        try:
            if request.host != self._host:
                raise ChannelError(f"this is {self._host}, not {request.host}")
            token = self._book.issue(request.pool, request.volume)
        except (EvacuatorError, OSError) as exc:
            error = str(exc) or repr(exc)
            log.warning("receive_ticket_refused", host=self._host, pool=request.pool, volume=request.volume,
                        error=error)
            return ReceiveTicket(host=self._host, pool=request.pool, volume=request.volume, error=error)
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
            if not self._unproven.acquire(blocking=False):
                conn.close()  # a flood of connections without tickets: nobody's copy waits behind it
                continue
            try:
                threading.Thread(target=self._serve, args=(conn, peer[0]), name="evacuator-data-receive",
                                 daemon=True).start()
            except RuntimeError as exc:  # no thread to be had: this one connection is refused
                log.error("data_channel_accept_failed", host=self._host, error=str(exc))
                self._unproven.release()
                conn.close()

    def _serve(self, raw: socket.socket, peer: str) -> None:
        conn, ticket, proven, slot, written = raw, None, False, False, False
        try:
            deadline = time.monotonic() + HELLO_TIMEOUT_SECONDS
            conn = self._secure(raw, deadline)
            ticket = self._redeem_hello(conn, deadline)
            self._unproven.release()
            proven = True
            if not self._slots.acquire(blocking=False):
                raise ChannelError("too many transfers at once")
            slot = True
            conn.settimeout(self._stall_timeout_seconds)
            began = time.monotonic()
            conn.sendall(GO)
            written_bytes, flush_seconds = self._receive_into(conn, ticket)
            written = True
            with self._lock:  # counted before DONE, which lets the sender (and a test) go on
                self.received += 1
            conn.sendall(DONE + DONE_BODY.pack(written_bytes))
            log.info("volume_received", host=self._host, pool=ticket.pool, volume=ticket.volume, peer=peer,
                     bytes_written=written_bytes, seconds=round(time.monotonic() - began, 3),
                     flush_seconds=round(flush_seconds, 3))
        except Exception as exc:  # this transfer fails, said so to its sender; the daemon goes on
            known = isinstance(exc, ChannelError | OSError | ValueError | OverflowError)
            log.warning("volume_receive_failed", host=self._host, peer=peer, error=str(exc) or repr(exc),
                        pool=None if ticket is None else ticket.pool,
                        volume=None if ticket is None else ticket.volume, exc_info=not known)
            with contextlib.suppress(OSError, ValueError):
                conn.sendall(error_frame(str(exc) or repr(exc)))
        finally:
            conn.close()
            if ticket is not None:
                self._book.finish(ticket, written=written)
            if slot:
                self._slots.release()
            if not proven:
                self._unproven.release()

    def _secure(self, raw: socket.socket, deadline: float) -> socket.socket:
        """The connection as its first byte asks: TLS, or clear text where this host allows it."""
        raw.settimeout(_left(deadline))
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if raw.recv(1, socket.MSG_PEEK) == TLS_HANDSHAKE:
            return self._tls.context.wrap_socket(raw, server_side=True)
        if not self._allow_clear:
            raise ChannelError("this host takes copies over TLS only")
        return raw

    def _redeem_hello(self, conn: socket.socket, deadline: float) -> Ticket:
        conn.settimeout(_left(deadline))
        hello = receive_exactly(conn, len(MAGIC) + TOKEN_BYTES)
        if hello[:len(MAGIC)] != MAGIC:
            raise ChannelError("not an evacuator data channel")
        return self._book.redeem(hello[len(MAGIC):])

    def _receive_into(self, conn: socket.socket, ticket: Ticket) -> tuple[int, float]:
        """(data bytes written, seconds the final flush took)."""
        os.ftruncate(ticket.fd, 0)  # an exact copy: no byte of the fresh file (a qcow2 header) outlives it
        written = _write_frames(conn, ticket.fd, ticket.limit_bytes, self._floor())
        flushing = time.monotonic()
        # Durable before DONE, the file and its name: the mover removes the source once it is verified.
        os.fsync(ticket.fd)
        fsync_directory(ticket.path.parent)
        return written, time.monotonic() - flushing

    def _floor(self) -> Callable[[int], None]:
        """Raises once a transfer has been slower than `min_bytes_per_second` on average, after a grace of
        the stall timeout: a sender that trickles bytes holds no file open for long."""
        began = time.monotonic()

        def check(written_bytes: int) -> None:
            allowed = self._stall_timeout_seconds + written_bytes / self._min_bytes_per_second
            if time.monotonic() - began > allowed:
                raise ChannelError(f"the transfer ran below {self._min_bytes_per_second / 2**20:.0f} MiB/s")

        return check


def _write_frames(conn: socket.socket, fd: int, limit_bytes: int, floor: Callable[[int], None]) -> int:
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
        receive_into(conn, buffer[:length])
        done = 0
        while done < length:  # a regular file takes it all unless the disk fills (then OSError ENOSPC)
            done += os.pwrite(fd, buffer[done:length], offset + done)
        written += length
        floor(written)
        start = offset if unflushed is None else min(unflushed[0], offset)
        unflushed = (start, max(offset + length, 0 if unflushed is None else unflushed[1]))
        if unflushed[1] - unflushed[0] >= WRITEBACK_EVERY_BYTES:
            start_writeback(fd, unflushed[0], unflushed[1] - unflushed[0])
            unflushed = None


def _left(deadline: float) -> float:
    return max(0.01, deadline - time.monotonic())


def _within(limit_bytes: int, end_bytes: int) -> None:
    if end_bytes > limit_bytes:
        raise ChannelError(f"writing up to byte {end_bytes} would pass the volume's limit of {limit_bytes}")
