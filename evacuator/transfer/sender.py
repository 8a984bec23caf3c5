"""The mover's side of the data channel: a ticket from the destination's daemon, then the volume's frames.

Anything that goes wrong before the token is sent (no daemon, an older one, no ticket, no connection, a
refused one, a TLS handshake that fails or times out, a certificate other than the ticket's, a daemon that
does not answer the hello's READY in time), or the daemon's explicit refusal of it, leaves the chunks and
the file untouched and returns None: the caller uploads through libvirt instead, which is slower but needs
nothing of the peer's daemon. Any other failure after the token went is the copy's failure (HypervisorError),
handled as any failed copy (the partial volume is removed and redone): a daemon that did not answer in time
may still be about to write the file, so libvirt must not write it too.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterable
from typing import Protocol
from urllib.parse import urlsplit

import structlog
from pydantic import ValidationError

from evacuator.errors import HypervisorError
from evacuator.transfer.chunks import Chunk, HoleChunk
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
    READY,
    ChannelError,
    ChannelRefused,
    Encryption,
    ReceiveRequest,
    ReceiveTicket,
    client_tls,
    read_answer,
    wants_tls,
)

log = structlog.get_logger(__name__)


class TicketSource(Protocol):
    """Asks a host's own daemon for a ticket to its data channel (evacuator/peers/rpc.py's PeerClient, over
    the broker; the tests' fakes)."""

    def ticket(self, request: ReceiveRequest, *, timeout_seconds: float) -> ReceiveTicket | str:
        """The daemon's ticket, which may be a refusal with its reason; else why none came (for the log)."""
        ...


class DataChannelClient:
    """Sends volumes to peers' daemons (evacuator/transfer/receiver.py); one connection per volume, so it is
    safe from several movers' threads at once."""

    def __init__(
        self, tickets: TicketSource, *, encryption: Encryption, stall_timeout_seconds: float = 60.0,
        min_bytes_per_second: float = 10 * 1024 * 1024, ticket_timeout_seconds: float = 10.0,
        connect_timeout_seconds: float = 10.0, source_address: str | None = None,
    ) -> None:
        """`connect_timeout_seconds` bounds the connection, its TLS handshake and the daemon's READY, each;
        `source_address`: the address to connect from (this host's migration address, which peers
        allow), None: as the routes choose."""
        self._tickets = tickets
        self._source_address = source_address
        self._encryption = encryption
        self._stall_timeout_seconds = stall_timeout_seconds
        self._min_bytes_per_second = min_bytes_per_second
        self._ticket_timeout_seconds = ticket_timeout_seconds
        self._connect_timeout_seconds = connect_timeout_seconds
        self._lock = threading.Lock()
        # Volumes that went through a peer's channel: the tests and the bench show which path a copy took.
        self.sent_volumes = 0

    def send(self, *, host: str, uri: str, pool: str, volume: str, chunks: Iterable[Chunk]) -> int | None:
        """Data bytes written by `host`'s daemon into `pool/volume`, durably; None when its channel is not
        available and nothing was taken from `chunks`. `uri`: how libvirt reaches the host (its address, and
        whether that connection is encrypted)."""
        context = {"host": host, "pool": pool, "volume": volume}
        began = time.monotonic()
        ticket = self._ticket(host, pool, volume)
        if ticket is None:
            return None
        to = ticket.address or urlsplit(uri).hostname
        # TLS unless both sides settle for clear text: the daemon allows it and this host's settings do.
        tls = wants_tls(self._encryption, uri) or not ticket.clear_allowed
        if to is None or ticket.port is None or ticket.token is None or (tls and ticket.tls_sha256 is None):
            log.info("data_channel_unavailable", reason="the ticket names no address or no way to use it",
                     **context)
            return None
        try:
            sock = self._connect(to, ticket.port, tls_sha256=ticket.tls_sha256 if tls else None)
        except (ChannelError, OSError, ValueError) as exc:
            log.warning("data_channel_unavailable", reason=str(exc) or repr(exc), address=to, **context)
            return None
        with contextlib.closing(sock):
            try:
                self._greet(sock)
            except (ChannelError, OSError, ValueError) as exc:  # the token is still ours: libvirt copies
                log.warning("data_channel_unavailable", reason=str(exc) or repr(exc), address=to, **context)
                return None
            try:
                self._hello(sock, ticket.token)
            except ChannelRefused as exc:
                log.warning("data_channel_unavailable", reason=str(exc), address=to, **context)
                return None
            sending = time.monotonic()
            try:
                written = self._send_frames(sock, chunks)
            except (ChannelError, OSError) as exc:
                raise HypervisorError(f"host {host}: copying {pool}/{volume} over the data channel failed: "
                                      f"{_reason(sock, exc)}") from exc
        with self._lock:
            self.sent_volumes += 1
        # Where the time went: the ticket and the connection, then the bytes until the daemon's fsync.
        log.info("data_channel_sent", bytes_written=written, tls=tls, **context,
                 setup_seconds=round(sending - began, 3),
                 transfer_seconds=round(time.monotonic() - sending, 3))
        return written

    def _ticket(self, host: str, pool: str, volume: str) -> ReceiveTicket | None:
        context = {"host": host, "pool": pool, "volume": volume}
        try:
            request = ReceiveRequest(host=host, pool=pool, volume=volume)
        except ValidationError as exc:  # a name no daemon takes: upload through libvirt instead
            log.info("data_channel_unavailable", reason=str(exc).splitlines()[0], **context)
            return None
        ticket = self._tickets.ticket(request, timeout_seconds=self._ticket_timeout_seconds)
        if isinstance(ticket, str):
            log.info("data_channel_unavailable", reason=ticket, **context)
            return None
        if ticket.token is None or (ticket.host, ticket.pool, ticket.volume) != (host, pool, volume):
            log.info("data_channel_unavailable", reason=ticket.error or "the ticket is for something else",
                     **context)
            return None
        return ticket

    def _connect(self, address: str, port: int, *, tls_sha256: str | None) -> socket.socket:
        source = None if self._source_address is None else (self._source_address, 0)
        sock = socket.create_connection((address, port), timeout=self._connect_timeout_seconds,
                                        source_address=source)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if tls_sha256 is not None:
                sock = client_tls(sock, expected_sha256=tls_sha256,
                                  timeout_seconds=self._connect_timeout_seconds)
        except BaseException:
            sock.close()
            raise
        return sock

    def _greet(self, sock: socket.socket) -> None:
        """MAGIC, and the daemon's READY: it took this connection, so the token may go."""
        sock.settimeout(self._connect_timeout_seconds)
        sock.sendall(MAGIC)
        kind, _ = read_answer(sock)
        if kind != READY:
            raise ChannelError(f"the receiver answered {kind!r} to the greeting")

    def _hello(self, sock: socket.socket, token: str) -> None:
        """Shows the token and waits for GO; past this point only the daemon's refusal allows a fallback."""
        try:
            sock.sendall(bytes.fromhex(token))
            kind, _ = read_answer(sock)
            if kind != GO:
                raise ChannelError(f"the receiver answered {kind!r} to the hello")
        except ChannelRefused:
            raise
        except (ChannelError, OSError) as exc:
            raise HypervisorError(f"the data channel's receiver did not let the copy start: {exc!r}") from exc
        sock.settimeout(self._stall_timeout_seconds)

    def _send_frames(self, sock: socket.socket, chunks: Iterable[Chunk]) -> int:
        offset = sent = 0
        for chunk in chunks:
            if isinstance(chunk, HoleChunk):
                offset += chunk.length_bytes  # the receiver's file starts empty: a hole is already there
                continue
            view = memoryview(chunk.data)
            for start in range(0, len(view), MAX_FRAME_BYTES):
                piece = view[start:start + MAX_FRAME_BYTES]
                sock.sendall(DATA + DATA_HEADER.pack(offset, len(piece)))
                sock.sendall(piece)
                offset += len(piece)
                sent += len(piece)
        sock.sendall(END + END_BODY.pack(offset, sent))
        # The daemon answers once the file is on disk: allow for flushing what the disk has not taken yet.
        sock.settimeout(self._stall_timeout_seconds + sent / self._min_bytes_per_second)
        kind, body = read_answer(sock)
        (written,) = DONE_BODY.unpack(body) if kind == DONE else (-1,)
        if written != sent:
            raise ChannelError(f"the receiver wrote {written} bytes of {sent}")
        return sent


def _reason(sock: socket.socket, exc: BaseException) -> str:
    """The receiver's own account when it sent one before closing (a full disk, say), else `exc`."""
    if isinstance(exc, ChannelError):
        return str(exc)
    try:
        sock.settimeout(2.0)
        read_answer(sock)
    except ChannelError as told:
        return f"{told} ({exc!r})"
    except (OSError, ValueError):
        pass  # the connection was reset with the receiver's account unread: the local error is all there is
    return repr(exc)
