"""Which volume files this host's data channel may write, for whom, and once: the daemon's ticket book.

A ticket is issued only for a file that libvirt says is a volume of this host's pool, that no defined VM
names (as a volume, a file or a backing file), that holds at most `FRESH_LIMIT_BYTES` and was created or
changed within `FRESH_SECONDS` (a volume just created for the copy), and that no other ticket or transfer
holds and this daemon has not already filled. The file is opened when the ticket is issued and the ticket
keeps that descriptor, so the bytes go to exactly the file that was checked, whatever happens to its name.

Who wrote what: a ticket names its requester (the asking host's broker user, as the caller passes it), and
for each completed transfer the book remembers which requester wrote which (pool, volume) and when, for
`WRITTEN_BY_SECONDS` and at most `WRITTEN_BY_REMEMBERED` volumes (the oldest forgotten first).
`written_by(pool, volume)` answers with the requester of the last completed transfer into that volume while
it is remembered, else None (also once a new ticket is issued for a new file under that name): the digest
service answers only the host whose copy it verifies.
"""

from __future__ import annotations

import collections
import hmac
import os
import secrets
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from evacuator.transfer.wire import TOKEN_BYTES, ChannelError

FRESH_LIMIT_BYTES = 1 << 20  # a fresh raw volume stores nothing; a fresh qcow2 its header (~200 KiB)
FRESH_SECONDS = 300.0  # the mover asks for its ticket right after creating the volume
MAX_OPEN_TICKETS = 64
_WRITTEN_REMEMBERED = 4096
# How long, and for how many volumes, the book remembers who wrote a volume: a mover asks for the digest of
# its copy within seconds of sending it (or minutes, for a copy that waited for its verification).
WRITTEN_BY_SECONDS = 1800.0
WRITTEN_BY_REMEMBERED = 4096


@dataclass(frozen=True, slots=True, kw_only=True)
class ReceivableFile:
    """Where a volume's bytes go, and how far they may reach."""

    path: Path
    limit_bytes: int


FileLocator = Callable[[str, str], ReceivableFile]
"""(pool, volume) -> its file, when this host's pool holds it and no VM uses it; else an EvacuatorError."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Ticket:
    """A redeemed or open ticket: the descriptor of the checked file, and how far it may be written."""

    pool: str
    volume: str
    path: Path
    fd: int
    file_id: tuple[int, int]  # (st_dev, st_ino)
    limit_bytes: int
    expires_at: float
    requester: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class _Writer:
    requester: str | None
    at: float  # on the book's (monotonic) clock


class TicketBook:
    """Thread-safe. `clock` is monotonic (expiry), `wall_clock` the epoch (file change times)."""

    def __init__(self, *, locate: FileLocator, ttl_seconds: float,
                 clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time,
                 writers_remembered: int = WRITTEN_BY_REMEMBERED) -> None:
        self._locate = locate
        self._ttl_seconds = ttl_seconds
        self._clock = clock
        self._wall_clock = wall_clock
        self._open: dict[bytes, Ticket] = {}
        self._busy: set[tuple[int, int]] = set()  # files under an open ticket or a running transfer
        self._written: collections.deque[tuple[int, int, int]] = collections.deque(maxlen=_WRITTEN_REMEMBERED)
        self._writers: collections.OrderedDict[tuple[str, str], _Writer] = collections.OrderedDict()
        self._writers_remembered = writers_remembered
        self._lock = threading.Lock()

    def issue(self, pool: str, volume: str, requester: str | None = None) -> bytes:
        """A new ticket's token; EvacuatorError saying why not. `requester`: who asks (the asking host's
        broker user), remembered with the volume once the transfer completes (`written_by`)."""
        target = self._locate(pool, volume)
        fd = os.open(target.path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            found = os.fstat(fd)
            if not stat.S_ISREG(found.st_mode):
                raise ChannelError(f"{target.path} is not a regular file")
            if found.st_blocks * 512 > FRESH_LIMIT_BYTES:
                raise ChannelError(f"{pool}/{volume} holds data already: only a fresh volume is written")
            if self._wall_clock() - found.st_ctime > FRESH_SECONDS:
                raise ChannelError(f"{pool}/{volume} was not created for this copy (unchanged for over "
                                   f"{FRESH_SECONDS:.0f} s)")
            file_id = (found.st_dev, found.st_ino)
            token = secrets.token_bytes(TOKEN_BYTES)
            ticket = Ticket(pool=pool, volume=volume, path=target.path, fd=fd, file_id=file_id,
                            limit_bytes=target.limit_bytes, expires_at=self._clock() + self._ttl_seconds,
                            requester=requester)
            with self._lock:
                self._drop_expired()
                if file_id in self._busy or (*file_id, found.st_ctime_ns) in self._written:
                    raise ChannelError(f"{pool}/{volume} is being written, or was, over this channel")
                if len(self._open) >= MAX_OPEN_TICKETS:
                    raise ChannelError("too many tickets open")
                self._open[token] = ticket
                self._busy.add(file_id)
                self._writers.pop((pool, volume), None)  # a new file under the name: nobody wrote it yet
        except BaseException:
            os.close(fd)
            raise
        return token

    def redeem(self, offered: bytes) -> Ticket:
        """The ticket `offered` names, taken from the book: the caller owns its descriptor and must
        `finish` it."""
        with self._lock:
            self._drop_expired()
            # compare_digest over every open ticket: which token is right must not show in the timing.
            match = next((t for t in self._open if hmac.compare_digest(t, offered)), None)
            if match is None:
                raise ChannelError("no such ticket (never issued, used already or expired)")
            return self._open.pop(match)

    def finish(self, ticket: Ticket, *, written: bool) -> None:
        """Closes the ticket's file; `written`: the copy completed, so the file is never written again."""
        try:
            if written:
                changed_ns = os.fstat(ticket.fd).st_ctime_ns
                with self._lock:
                    self._written.append((*ticket.file_id, changed_ns))
                    self._remember_writer(ticket)
        finally:
            os.close(ticket.fd)
            with self._lock:
                self._busy.discard(ticket.file_id)

    def written_by(self, pool: str, volume: str) -> str | None:
        """The requester of the last completed transfer into `pool/volume`, while the book remembers it (at
        most WRITTEN_BY_SECONDS); None when there was none, it is forgotten, or it named no requester."""
        with self._lock:
            self._forget_old_writers()
            writer = self._writers.get((pool, volume))
        return None if writer is None else writer.requester

    def close(self) -> None:
        with self._lock:
            for ticket in self._open.values():
                os.close(ticket.fd)
                self._busy.discard(ticket.file_id)
            self._open.clear()

    def _drop_expired(self) -> None:
        now = self._clock()
        for token in [token for token, ticket in self._open.items() if ticket.expires_at <= now]:
            ticket = self._open.pop(token)
            os.close(ticket.fd)
            self._busy.discard(ticket.file_id)

    def _remember_writer(self, ticket: Ticket) -> None:
        """Under the lock: the newest transfer into a volume is the one remembered, and the last forgotten."""
        key = (ticket.pool, ticket.volume)
        self._writers.pop(key, None)
        self._writers[key] = _Writer(requester=ticket.requester, at=self._clock())
        while len(self._writers) > self._writers_remembered:
            self._writers.popitem(last=False)
        self._forget_old_writers()

    def _forget_old_writers(self) -> None:
        horizon = self._clock() - WRITTEN_BY_SECONDS
        while self._writers and next(iter(self._writers.values())).at < horizon:
            self._writers.popitem(last=False)
