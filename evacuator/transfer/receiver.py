"""This host's daemon receiving a copy into its own volume file over the data channel (wire: wire.py).

Who may write what is the ticket book's (tickets.py); who may connect at all, admission.py's: only peers'
addresses, and at most `MAX_UNPROVEN_PER_ADDRESS` connections from each (`MAX_UNPROVEN` in all) that have
not shown a ticket yet. Here: connections. From accept to a valid token, the TLS handshake and the hello
included, a connection has `hello_timeout_seconds` in all (HELLO_TIMEOUT_SECONDS), however slowly its peer
drips bytes; then it is dropped. So nobody without a ticket holds a transfer slot or starves the others. A
transfer whose bytes stop for the stall timeout, or that falls below `min_bytes_per_second` on average after
that grace, is dropped too: no connection keeps a volume's file open for long.

`written_by(pool, volume)`: the requester (the asking host's broker user, passed to `issue`) of the last
completed transfer into that volume, remembered for 30 minutes (tickets.py, WRITTEN_BY_SECONDS), so the
digest service can answer only the host whose copy it verifies.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Collection

import structlog

from evacuator.errors import EvacuatorError
from evacuator.transfer.admission import Address, Admission, RateLimitedLog, allowed_networks
from evacuator.transfer.files import fsync_directory
from evacuator.transfer.frames import write_frames
from evacuator.transfer.tickets import FileLocator, Ticket, TicketBook
from evacuator.transfer.wire import (
    DONE,
    DONE_BODY,
    GO,
    MAGIC,
    READY,
    TLS_HANDSHAKE,
    TOKEN_BYTES,
    ChannelError,
    ReceiveRequest,
    ReceiveTicket,
    ServerTls,
    error_frame,
    receive_exactly,
)

log = structlog.get_logger(__name__)

HELLO_TIMEOUT_SECONDS = 10.0
# Every this many bytes written, their writeback starts: the disk writes while the network delivers, and
# the final fsync finds little left (measured on the lab: 1 GiB durable in 0.60 s median instead of 0.80).
WRITEBACK_EVERY_BYTES = 8 << 20


class VolumeReceiver:
    """Listens for movers holding a ticket; each connection runs on a thread of its own, at most
    `max_transfers` of them writing at once."""

    def __init__(
        self, *, host: str, locate: FileLocator, listen_address: str, port: int, tls: ServerTls,
        allow_from: Collection[str], allow_clear: bool = False, advertise_address: str | None = None,
        stall_timeout_seconds: float = 60.0, min_bytes_per_second: float = 10 * 1024 * 1024,
        max_transfers: int = 4, ticket_ttl_seconds: float = 60.0,
        hello_timeout_seconds: float = HELLO_TIMEOUT_SECONDS, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`allow_from`: the peers' addresses, networks or names (resolved at `start`): connections from
        anywhere else are refused at once."""
        self._host = host
        self._book = TicketBook(locate=locate, ttl_seconds=ticket_ttl_seconds, clock=clock)
        self._listen = (listen_address, port)
        self._allow_from = tuple(allow_from)
        self._hello_timeout_seconds = hello_timeout_seconds
        self._said = RateLimitedLog()
        self._admission: Admission | None = None
        self._tls = tls
        self._allow_clear = allow_clear
        self._advertise_address = advertise_address
        self._stall_timeout_seconds = stall_timeout_seconds
        self._min_bytes_per_second = min_bytes_per_second
        self._slots = threading.BoundedSemaphore(max_transfers)
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
        """Resolves the peers' names and listens; ChannelError when the address cannot be bound (the daemon
        then fails to start)."""
        allowed = allowed_networks(self._allow_from, host=self._host)
        self._admission = Admission(host=self._host, allowed=allowed, said=self._said)
        try:
            # The address as written, or what its name resolves to now: IPv4 or IPv6, never every interface.
            family, _, _, _, address = socket.getaddrinfo(*self._listen, type=socket.SOCK_STREAM)[0]
            self._listener = socket.create_server(address[:2], family=family)
        except OSError as exc:
            raise ChannelError(f"data channel cannot listen on {self._listen[0]} port {self._listen[1]}: "
                               f"{exc.strerror}") from exc
        self._listener.settimeout(0.5)  # so close() is noticed
        self._thread = threading.Thread(target=self._accept_loop, name="evacuator-data-accept", daemon=True)
        self._thread.start()
        log.info("data_channel_listening", host=self._host, address=self._listen[0], port=self.port,
                 clear_allowed=self._allow_clear, allowed=[str(network) for network in allowed])

    def close(self) -> None:
        self._stop.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept loop at once
        if self._thread is not None:
            self._thread.join(5.0)
        if self._listener is not None:
            self._listener.close()
        self._book.close()

    def issue(self, request: ReceiveRequest, requester: str | None = None) -> ReceiveTicket:
        """A ticket for the requested volume, or one that says why not. Safe from any thread. `requester`:
        who asks (the asking host's broker user), remembered once the transfer completes (`written_by`)."""
        try:
            if request.host != self._host:
                raise ChannelError(f"this is {self._host}, not {request.host}")
            token = self._book.issue(request.pool, request.volume, requester=requester)
        except (EvacuatorError, OSError) as exc:
            error = str(exc) or repr(exc)
            log.warning("receive_ticket_refused", host=self._host, pool=request.pool, volume=request.volume,
                        error=error)
            return ReceiveTicket(host=self._host, pool=request.pool, volume=request.volume, error=error)
        return ReceiveTicket(host=self._host, pool=request.pool, volume=request.volume, token=token.hex(),
                             port=self.port, address=self._advertise_address, tls_sha256=self._tls.sha256,
                             clear_allowed=self._allow_clear)

    def written_by(self, pool: str, volume: str) -> str | None:
        """The requester of the last completed transfer into `pool/volume` while remembered (30 minutes),
        else None. Safe from any thread."""
        return self._book.written_by(pool, volume)

    def _accept_loop(self) -> None:
        assert self._listener is not None and self._admission is not None
        while not self._stop.is_set():
            try:
                conn, peer = self._listener.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if self._stop.is_set():
                    return
                log.error("data_channel_accept_failed", host=self._host, error=str(exc))
                self._stop.wait(1.0)
                continue
            # Strangers, and connections over their address's share, are closed before any TLS.
            address = self._admission.admit(peer[0])
            if address is None:
                conn.close()
                continue
            try:
                threading.Thread(target=self._serve, args=(conn, address), name="evacuator-data-receive",
                                 daemon=True).start()
            except RuntimeError as exc:  # no thread to be had: this one connection is refused
                log.error("data_channel_accept_failed", host=self._host, error=str(exc))
                self._admission.release(address)
                conn.close()

    def _serve(self, raw: socket.socket, address: Address) -> None:
        assert self._admission is not None
        conn, ticket, open_ticket, proven, slot = raw, None, None, False, False
        try:
            conn, ticket = self._hello(raw, address)
            open_ticket = ticket
            self._admission.release(address)
            proven = True
            if not self._slots.acquire(blocking=False):
                raise ChannelError("too many transfers at once")
            slot = True
            log.debug("volume_receive_started", host=self._host, pool=ticket.pool, volume=ticket.volume)
            conn.settimeout(self._stall_timeout_seconds)
            began = time.monotonic()
            conn.sendall(GO)
            written_bytes, flush_seconds = self._receive_into(conn, ticket)
            # Before DONE, which lets the mover go on and ask for the copy's digest: who wrote it is known.
            open_ticket = None
            self._book.finish(ticket, written=True)
            with self._lock:
                self.received += 1
            conn.sendall(DONE + DONE_BODY.pack(written_bytes))
            log.info("volume_received", host=self._host, pool=ticket.pool, volume=ticket.volume,
                     peer=str(address), bytes_written=written_bytes, flush_seconds=round(flush_seconds, 3),
                     seconds=round(time.monotonic() - began, 3))
        except Exception as exc:  # this transfer fails, said so to its sender; the daemon goes on
            if proven:
                known = isinstance(exc, ChannelError | OSError | ValueError | OverflowError)
                log.warning("volume_receive_failed", host=self._host, peer=str(address),
                            error=str(exc) or repr(exc), pool=None if ticket is None else ticket.pool,
                            volume=None if ticket is None else ticket.volume, exc_info=not known)
            with contextlib.suppress(OSError, ValueError):
                conn.sendall(error_frame(str(exc) or repr(exc)))
        finally:
            conn.close()
            if open_ticket is not None:
                self._book.finish(open_ticket, written=False)
            if slot:
                self._slots.release()
            if not proven:
                self._admission.release(address)

    def _hello(self, raw: socket.socket, address: Address) -> tuple[socket.socket, Ticket]:
        """The connection, secured, and the ticket it showed, all within the hello's deadline; a failure is
        nobody's transfer yet, so it is logged as refusals are, at a bounded rate."""
        deadline = time.monotonic() + self._hello_timeout_seconds
        conn = raw
        try:
            conn = self._secure(raw, deadline)
            return conn, self._redeem_hello(conn, deadline)
        except Exception as exc:
            self._said.warning("data_channel_hello_failed", address=address, host=self._host,
                               error=str(exc) or repr(exc))
            with contextlib.suppress(OSError, ValueError):
                conn.sendall(error_frame(str(exc) or repr(exc)))
            conn.close()
            raise

    def _secure(self, raw: socket.socket, deadline: float) -> socket.socket:
        """The connection as its first byte asks: TLS, its handshake done by `deadline`, or clear text where
        this host allows it."""
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        raw.settimeout(_left(deadline))
        if raw.recv(1, socket.MSG_PEEK) != TLS_HANDSHAKE:
            if not self._allow_clear:
                raise ChannelError("this host takes copies over TLS only")
            return raw
        conn = self._tls.context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        try:
            conn.settimeout(_left(deadline))  # the whole handshake's limit, not each read's (ssl, 3.5+)
            conn.do_handshake()
        except BaseException:
            conn.close()
            raise
        return conn

    def _redeem_hello(self, conn: socket.socket, deadline: float) -> Ticket:
        """The ticket the hello shows, all of it by `deadline`: READY only after MAGIC, so that a mover whose
        connection is refused has not sent its token."""
        if receive_exactly(conn, len(MAGIC), deadline=deadline) != MAGIC:
            raise ChannelError("not an evacuator data channel of this version")
        conn.settimeout(_left(deadline))
        conn.sendall(READY)
        return self._book.redeem(receive_exactly(conn, TOKEN_BYTES, deadline=deadline))

    def _receive_into(self, conn: socket.socket, ticket: Ticket) -> tuple[int, float]:
        """(data bytes written, seconds the final flush took)."""
        os.ftruncate(ticket.fd, 0)  # an exact copy: no byte of the fresh file (a qcow2 header) outlives it
        written = write_frames(conn, ticket.fd, limit_bytes=ticket.limit_bytes, floor=self._floor(),
                               writeback_every_bytes=WRITEBACK_EVERY_BYTES)
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


def _left(deadline: float) -> float:
    return max(0.01, deadline - time.monotonic())
