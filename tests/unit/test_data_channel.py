"""The data channel over real loopback sockets and real files: tickets, frames, TLS pinning, stalls, and who
wrote which volume (the guards before a ticket is shown: test_data_channel_guards.py)."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from evacuator.errors import HypervisorError
from evacuator.transfer.chunks import Chunk, DataChunk, HoleChunk
from evacuator.transfer.receiver import VolumeReceiver
from evacuator.transfer.sender import DataChannelClient, TicketSource
from evacuator.transfer.tickets import FRESH_SECONDS, WRITTEN_BY_SECONDS, ReceivableFile, TicketBook
from evacuator.transfer.wire import (
    DATA,
    DATA_HEADER,
    MAGIC,
    READY,
    ChannelError,
    Encryption,
    ReceiveRequest,
    ReceiveTicket,
    client_tls,
    read_answer,
    server_tls,
)

MIB = 1 << 20
TLS = server_tls("host-b")  # one key for the module: making one costs milliseconds, not nothing


class DirectTickets:
    """The broker leg, replaced: hands the request to the receiver as its daemon would, and can tamper."""

    def __init__(self, receiver: VolumeReceiver, *, tamper: dict[str, object] | None = None,
                 requester: str | None = "host.host-a") -> None:
        self._receiver = receiver
        self._tamper = tamper or {}
        self._requester = requester
        self.asked: list[ReceiveRequest] = []
        self.issued: list[ReceiveTicket] = []

    def ticket(self, request: ReceiveRequest, *, timeout_seconds: float) -> ReceiveTicket | str:
        self.asked.append(request)
        ticket = self._receiver.issue(request, self._requester).model_copy(update=self._tamper)
        self.issued.append(ticket)
        return ReceiveTicket.model_validate_json(ticket.model_dump_json())  # as the broker carries it


class SilentTickets:
    """A peer whose daemon is older, or gone: no ticket ever comes."""

    def __init__(self) -> None:
        self.asked: list[ReceiveRequest] = []

    def ticket(self, request: ReceiveRequest, *, timeout_seconds: float) -> ReceiveTicket | str:
        self.asked.append(request)
        return "no daemon of host-b listens"


@contextmanager
def receiving(target: Path, *, allow_clear: bool = False, limit_bytes: int = 1 << 40,
              stall_timeout_seconds: float = 10.0, clock: object = time.monotonic, max_transfers: int = 4,
              min_bytes_per_second: float = 1.0, allow_from: Sequence[str] = ("127.0.0.1",),
              hello_timeout_seconds: float = 10.0) -> Iterator[VolumeReceiver]:
    """host-b's channel on loopback, writing `target` as its pool's evacuator/vm-disk."""
    def locate(pool: str, volume: str) -> ReceivableFile:
        if (pool, volume) != ("evacuator", "vm-disk"):
            raise HypervisorError(f"no volume {pool}/{volume} here")
        return ReceivableFile(path=target, limit_bytes=limit_bytes)

    receiver = VolumeReceiver(host="host-b", locate=locate, listen_address="127.0.0.1", port=0,
                              tls=TLS, allow_clear=allow_clear, stall_timeout_seconds=stall_timeout_seconds,
                              max_transfers=max_transfers, min_bytes_per_second=min_bytes_per_second,
                              allow_from=allow_from, hello_timeout_seconds=hello_timeout_seconds,
                              clock=clock)  # type: ignore[arg-type]
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.close()


def fresh_volume(directory: Path) -> Path:
    """evacuator/vm-disk as a fresh raw volume's file: its size, no data."""
    path = directory / "vm-disk"
    with path.open("wb") as fresh:
        fresh.truncate(64 * MIB)
    return path


@pytest.fixture
def target(tmp_path: Path) -> Path:
    return fresh_volume(tmp_path)


def disk_chunks() -> list[Chunk]:
    return [DataChunk(data=os.urandom(MIB)), HoleChunk(length_bytes=8 * MIB), DataChunk(data=b"x" * 4096),
            DataChunk(data=os.urandom(3 * MIB)), HoleChunk(length_bytes=2 * MIB)]


def _expected(chunks: list[Chunk]) -> bytes:
    return b"".join(c.data if isinstance(c, DataChunk) else bytes(c.length_bytes) for c in chunks)


def send(tickets: TicketSource, chunks: list[Chunk] | Iterator[Chunk], *, encryption: Encryption = "tls",
          uri: str = "qemu+tcp://127.0.0.1/system", connect_timeout_seconds: float = 5.0) -> int | None:
    client = DataChannelClient(tickets, encryption=encryption, stall_timeout_seconds=5.0,
                               connect_timeout_seconds=connect_timeout_seconds)
    return client.send(host="host-b", uri=uri, pool="evacuator", volume="vm-disk", chunks=iter(chunks))


def greeted(sock: socket.socket) -> socket.socket:
    """`sock` after MAGIC and the receiver's READY: the token may go."""
    sock.sendall(MAGIC)
    assert read_answer(sock)[0] == READY
    return sock


def _hello(receiver: VolumeReceiver) -> socket.socket:
    """A clear-text connection that showed a fresh ticket and got GO, then holds still."""
    ticket = receiver.issue(ReceiveRequest(host="host-b", pool="evacuator", volume="vm-disk"))
    assert ticket.token is not None and ticket.port is not None, ticket.error
    sock = greeted(socket.create_connection(("127.0.0.1", ticket.port), timeout=5))
    sock.sendall(bytes.fromhex(ticket.token))
    assert read_answer(sock)[0] == b"G"
    return sock


def _sent_with_tls(logs: Sequence[Mapping[str, object]]) -> list[object]:
    return [event["tls"] for event in logs if event["event"] == "data_channel_sent"]


@pytest.mark.parametrize("encryption", ["tls", "none"])
def test_a_volume_arrives_byte_for_byte_with_its_holes_left_unwritten(target: Path, encryption: Encryption,
                                                                      ) -> None:
    chunks = disk_chunks()
    with receiving(target, allow_clear=True) as receiver, capture_logs() as logs:
        written = send(DirectTickets(receiver), chunks, encryption=encryption)
        assert receiver.received == 1
    assert _sent_with_tls(logs) == [encryption == "tls"]
    assert written == MIB + 4096 + 3 * MIB
    assert target.read_bytes() == _expected(chunks)  # the fresh file's 64 MiB length is cut to the copy's
    assert target.stat().st_blocks * 512 < 6 * MIB  # the 10 MiB of holes were never written


def test_a_ticket_is_good_for_one_transfer_only_and_a_written_file_gets_no_other(target: Path) -> None:
    with receiving(target) as receiver:
        tickets = DirectTickets(receiver)
        # A copy that leaves the file looking fresh still: a sparse disk's few KiB of data.
        assert send(tickets, [DataChunk(data=b"boot" * 1024), HoleChunk(length_bytes=8 * MIB)]) is not None
        assert "is being written, or was" in (receiver.issue(
            ReceiveRequest(host="host-b", pool="evacuator", volume="vm-disk")).error or "")
        replay = DirectTickets(receiver, tamper={"token": tickets.issued[0].token})
        assert send(replay, disk_chunks()) is None  # refused before any byte moved: the caller uses libvirt
        assert receiver.received == 1


def test_no_second_ticket_for_a_file_under_an_open_ticket(target: Path) -> None:
    with receiving(target) as receiver:
        request = ReceiveRequest(host="host-b", pool="evacuator", volume="vm-disk")
        assert receiver.issue(request).token is not None
        second = receiver.issue(request)
    assert second.token is None and "is being written, or was" in (second.error or "")


def test_no_ticket_for_a_file_not_created_for_this_copy(target: Path) -> None:
    book = TicketBook(locate=lambda pool, volume: ReceivableFile(path=target, limit_bytes=1 << 30),
                      ttl_seconds=60, wall_clock=lambda: time.time() + FRESH_SECONDS + 1)
    with pytest.raises(ChannelError, match="not created for this copy"):
        book.issue("evacuator", "vm-disk")


def test_an_expired_ticket_is_refused(target: Path) -> None:
    now = [1000.0]
    with receiving(target, clock=lambda: now[0]) as receiver:
        ticket = receiver.issue(ReceiveRequest(host="host-b", pool="evacuator", volume="vm-disk"))
        now[0] += 61.0
        assert ticket.token is not None and ticket.port is not None
        with socket.create_connection(("127.0.0.1", ticket.port), timeout=5) as raw:
            sock = greeted(client_tls(raw, expected_sha256=TLS.sha256, timeout_seconds=5))
            sock.sendall(bytes.fromhex(ticket.token))
            with pytest.raises(ChannelError, match="expired"):
                read_answer(sock)


def test_a_receiver_whose_certificate_is_not_the_tickets_gets_no_token(target: Path) -> None:
    with receiving(target) as receiver:
        assert send(DirectTickets(receiver, tamper={"tls_sha256": "0" * 64}), disk_chunks()) is None
        assert receiver.received == 0
    assert target.read_bytes() == bytes(64 * MIB)


@pytest.mark.parametrize(("encryption", "uri", "allow_clear", "tls"), [
    ("auto", "qemu+tcp://hv-02/system", True, False),  # libvirt's own connection is clear: so is the copy
    ("auto", "qemu+ssh://root@hv-02/system", True, True),
    ("auto", "qemu://hv-02/system", True, True),  # libvirt's default remote transport is TLS
    ("tls", "qemu+tcp://hv-02/system", True, True),
    ("none", "qemu+tls://hv-02/system", True, False),
    ("none", "qemu+tcp://hv-02/system", False, True),  # the receiver takes TLS only: TLS it is
])
def test_the_copy_is_encrypted_unless_both_sides_settle_for_clear_text(
    target: Path, encryption: Encryption, uri: str, allow_clear: bool, tls: bool,
) -> None:
    with receiving(target, allow_clear=allow_clear) as receiver, capture_logs() as logs:
        # hv-02 resolves nowhere here: the daemon's advertised address stands in for it.
        tickets = DirectTickets(receiver, tamper={"address": "127.0.0.1"})
        assert send(tickets, disk_chunks(), encryption=encryption, uri=uri) is not None
    assert _sent_with_tls(logs) == [tls]


def test_a_receiver_that_takes_tls_only_refuses_clear_text(target: Path) -> None:
    with receiving(target) as receiver:
        ticket = receiver.issue(ReceiveRequest(host="host-b", pool="evacuator", volume="vm-disk"))
        assert ticket.token is not None and ticket.port is not None and not ticket.clear_allowed
        with socket.create_connection(("127.0.0.1", ticket.port), timeout=5) as sock:
            sock.sendall(MAGIC)
            with pytest.raises(ChannelError, match="over TLS only"):
                read_answer(sock)
        assert receiver.received == 0


def test_no_ticket_from_an_older_or_absent_daemon_means_libvirt_does_the_copy() -> None:
    chunks = iter(disk_chunks())
    client = DataChannelClient(SilentTickets(), encryption="auto")
    assert client.send(host="host-b", uri="qemu+tcp://127.0.0.1/system", pool="evacuator", volume="vm-disk",
                       chunks=chunks) is None
    assert next(chunks) is not None  # nothing was taken from the copy


def test_a_volume_name_no_daemon_would_take_goes_through_libvirt_without_asking() -> None:
    tickets = SilentTickets()
    client = DataChannelClient(tickets, encryption="auto")
    assert client.send(host="host-b", uri="qemu+tcp://127.0.0.1/system", pool="evacuator",
                       volume="../etc/passwd", chunks=iter(disk_chunks())) is None
    assert tickets.asked == []


@pytest.mark.parametrize(("pool", "volume", "host", "error"), [
    ("other", "vm-disk", "host-b", "no volume other/vm-disk"),
    ("evacuator", "vm-disk", "host-c", "this is host-b, not host-c"),
])
def test_tickets_only_for_this_hosts_own_volumes(target: Path, pool: str, volume: str, host: str,
                                                 error: str) -> None:
    with receiving(target) as receiver:
        ticket = receiver.issue(ReceiveRequest(host=host, pool=pool, volume=volume))
    assert ticket.token is None and ticket.error is not None and error in ticket.error


def test_no_ticket_for_a_volume_that_holds_data(target: Path) -> None:
    target.write_bytes(os.urandom(2 * MIB))
    with receiving(target) as receiver:
        ticket = receiver.issue(ReceiveRequest(host="host-b", pool="evacuator", volume="vm-disk"))
    assert ticket.token is None and "holds data already" in (ticket.error or "")


def test_the_bytes_go_to_the_file_that_was_checked_whatever_its_name_now_names(target: Path) -> None:
    with receiving(target) as receiver:
        ticket = receiver.issue(ReceiveRequest(host="host-b", pool="evacuator", volume="vm-disk"))
        target.unlink()
        target.write_bytes(b"")  # another file under the name: never checked, so never written
        assert send(DirectTickets(receiver, tamper={"token": ticket.token}), disk_chunks()) is not None
    assert target.read_bytes() == b""


def test_writing_past_a_raw_volumes_capacity_fails_the_copy(target: Path) -> None:
    with receiving(target, limit_bytes=2 * MIB) as receiver:
        with pytest.raises(HypervisorError, match="would pass the volume's limit of 2097152"):
            send(DirectTickets(receiver), disk_chunks())
        assert receiver.received == 0


def test_a_sender_that_stalls_is_dropped_and_the_slot_freed(target: Path) -> None:
    with receiving(target, allow_clear=True, stall_timeout_seconds=0.5, max_transfers=1) as receiver:
        ticket = receiver.issue(ReceiveRequest(host="host-b", pool="evacuator", volume="vm-disk"))
        assert ticket.token is not None and ticket.port is not None
        with greeted(socket.create_connection(("127.0.0.1", ticket.port), timeout=5)) as sock:
            sock.sendall(bytes.fromhex(ticket.token))
            assert read_answer(sock)[0] == b"G"
            sock.sendall(DATA + DATA_HEADER.pack(0, MIB) + b"half")  # then nothing more
            began = time.monotonic()
            with pytest.raises(ChannelError, match="timed out"):
                read_answer(sock)
            assert time.monotonic() - began < 5
        target.write_bytes(b"")
        assert send(DirectTickets(receiver), disk_chunks(), encryption="none") is not None  # the slot is free


def test_a_sender_that_dies_mid_copy_fails_its_transfer_and_frees_the_slot(target: Path) -> None:
    with receiving(target, allow_clear=True, max_transfers=1) as receiver, capture_logs() as logs:
        with _hello(receiver) as sock:
            sock.sendall(DATA + DATA_HEADER.pack(0, MIB) + os.urandom(MIB // 2))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not _events(logs, "volume_receive_failed"):
            time.sleep(0.05)
        assert "closed the channel" in str(_events(logs, "volume_receive_failed")[0]["error"])
        assert receiver.received == 0
        target.write_bytes(b"")  # a new file, as the mover's retry makes
        assert send(DirectTickets(receiver), disk_chunks(), encryption="none") is not None  # the slot is free


def test_a_busy_receiver_refuses_before_go_and_the_copy_goes_through_libvirt(target: Path,
                                                                             tmp_path: Path) -> None:
    other = tmp_path / "other-disk"
    other.write_bytes(b"")
    files = {"vm-disk": target, "other-disk": other}

    def locate(pool: str, volume: str) -> ReceivableFile:
        return ReceivableFile(path=files[volume], limit_bytes=1 << 40)

    receiver = VolumeReceiver(host="host-b", locate=locate, listen_address="127.0.0.1", port=0, tls=TLS,
                              allow_clear=True, max_transfers=1, allow_from=["127.0.0.1"])
    receiver.start()
    try:
        with _hello(receiver):  # holds the only slot
            chunks = iter(disk_chunks())
            client = DataChannelClient(DirectTickets(receiver), encryption="none")
            assert client.send(host="host-b", uri="qemu+tcp://127.0.0.1/system", pool="evacuator",
                               volume="other-disk", chunks=chunks) is None
            assert isinstance(next(chunks), DataChunk)  # nothing was taken from the copy
    finally:
        receiver.close()


def test_a_sender_that_trickles_is_cut_off(target: Path) -> None:
    with receiving(target, allow_clear=True, stall_timeout_seconds=0.3, min_bytes_per_second=100 * MIB,
                   ) as receiver, capture_logs() as logs, _hello(receiver) as sock:
        began = time.monotonic()
        with pytest.raises(OSError):
            for offset in range(0, 4 * MIB, 8192):  # never still for the stall timeout, but far too slow
                sock.sendall(DATA + DATA_HEADER.pack(offset, 8192) + bytes(8192))
                time.sleep(0.05)
        assert time.monotonic() - began < 3
    assert "ran below 100 MiB/s" in str(_events(logs, "volume_receive_failed")[0]["error"])


def _events(logs: Sequence[Mapping[str, object]], name: str) -> list[Mapping[str, object]]:
    return [event for event in logs if event["event"] == name]


def test_the_receiver_remembers_who_wrote_a_volume_for_a_while(target: Path) -> None:
    with receiving(target) as receiver:
        assert receiver.written_by("evacuator", "vm-disk") is None
        assert send(DirectTickets(receiver, requester="host.host-a"), disk_chunks()) is not None
        assert receiver.written_by("evacuator", "vm-disk") == "host.host-a"
        assert receiver.written_by("evacuator", "other-disk") is None


def _book(target: Path, now: list[float], *, remembered: int = 4096) -> TicketBook:
    def locate(pool: str, volume: str) -> ReceivableFile:
        return ReceivableFile(path=target.with_name(volume), limit_bytes=MIB)

    return TicketBook(locate=locate, ttl_seconds=60, clock=lambda: now[0], writers_remembered=remembered)


def _transfer(book: TicketBook, volume: str, requester: str | None, *, written: bool = True) -> None:
    book.finish(book.redeem(book.issue("evacuator", volume, requester)), written=written)


def test_who_wrote_a_volume_is_forgotten_after_half_an_hour(target: Path) -> None:
    now = [1000.0]
    book = _book(target, now)
    _transfer(book, "vm-disk", "host.host-a")
    now[0] += WRITTEN_BY_SECONDS - 1
    assert book.written_by("evacuator", "vm-disk") == "host.host-a"
    now[0] += 2
    assert book.written_by("evacuator", "vm-disk") is None


def test_a_new_file_under_the_name_forgets_who_wrote_the_old_one(target: Path) -> None:
    book = _book(target, [1000.0])
    _transfer(book, "vm-disk", "host.host-a")
    target.unlink()
    target.write_bytes(b"")  # removed, and created again for another host's copy
    book.issue("evacuator", "vm-disk", "host.host-c")
    assert book.written_by("evacuator", "vm-disk") is None


def test_a_transfer_that_did_not_complete_names_no_writer(target: Path) -> None:
    book = _book(target, [1000.0])
    _transfer(book, "vm-disk", "host.host-a", written=False)
    assert book.written_by("evacuator", "vm-disk") is None


def test_the_book_remembers_a_bounded_number_of_writers_the_oldest_forgotten_first(tmp_path: Path) -> None:
    now = [1000.0]
    book = _book(tmp_path / "any", now, remembered=2)
    for n in range(3):
        (tmp_path / f"disk-{n}").write_bytes(b"")
        _transfer(book, f"disk-{n}", f"host.h{n}")
        now[0] += 1
    assert [book.written_by("evacuator", f"disk-{n}") for n in range(3)] == [None, "host.h1", "host.h2"]
