"""The data channel over real loopback sockets and real files: tickets, frames, TLS pinning, stalls."""

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
from evacuator.transfer.tickets import FRESH_SECONDS, ReceivableFile, TicketBook
from evacuator.transfer.wire import (
    DATA,
    DATA_HEADER,
    MAGIC,
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

    def __init__(self, receiver: VolumeReceiver, *, tamper: dict[str, object] | None = None) -> None:
        self._receiver = receiver
        self._tamper = tamper or {}
        self.asked: list[ReceiveRequest] = []
        self.issued: list[ReceiveTicket] = []

    def ticket(self, request: ReceiveRequest, *, timeout_seconds: float) -> ReceiveTicket | str:
        self.asked.append(request)
        ticket = self._receiver.issue(request).model_copy(update=self._tamper)
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
def _receiver(target: Path, *, allow_clear: bool = False, limit_bytes: int = 1 << 40,
              stall_timeout_seconds: float = 10.0, clock: object = time.monotonic, max_transfers: int = 4,
              min_bytes_per_second: float = 1.0) -> Iterator[VolumeReceiver]:
    def locate(pool: str, volume: str) -> ReceivableFile:
        if (pool, volume) != ("evacuator", "vm-disk"):
            raise HypervisorError(f"no volume {pool}/{volume} here")
        return ReceivableFile(path=target, limit_bytes=limit_bytes)

    receiver = VolumeReceiver(host="host-b", locate=locate, listen_address="127.0.0.1", port=0,
                              tls=TLS, allow_clear=allow_clear, stall_timeout_seconds=stall_timeout_seconds,
                              max_transfers=max_transfers, min_bytes_per_second=min_bytes_per_second,
                              clock=clock)  # type: ignore[arg-type]
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.close()


@pytest.fixture
def target(tmp_path: Path) -> Path:
    path = tmp_path / "vm-disk"
    with path.open("wb") as fresh:
        fresh.truncate(64 * MIB)  # a fresh raw volume: its size, no data
    return path


def _chunks() -> list[Chunk]:
    return [DataChunk(data=os.urandom(MIB)), HoleChunk(length_bytes=8 * MIB), DataChunk(data=b"x" * 4096),
            DataChunk(data=os.urandom(3 * MIB)), HoleChunk(length_bytes=2 * MIB)]


def _expected(chunks: list[Chunk]) -> bytes:
    return b"".join(c.data if isinstance(c, DataChunk) else bytes(c.length_bytes) for c in chunks)


def _send(tickets: TicketSource, chunks: list[Chunk] | Iterator[Chunk], *, encryption: Encryption = "tls",
          uri: str = "qemu+tcp://127.0.0.1/system", connect_timeout_seconds: float = 5.0) -> int | None:
    client = DataChannelClient(tickets, encryption=encryption, stall_timeout_seconds=5.0,
                               connect_timeout_seconds=connect_timeout_seconds)
    return client.send(host="host-b", uri=uri, pool="evacuator", volume="vm-disk", chunks=iter(chunks))


def _hello(receiver: VolumeReceiver) -> socket.socket:
    """A clear-text connection that showed a fresh ticket and got GO, then holds still."""
    ticket = receiver.issue(ReceiveRequest(host="host-b", pool="evacuator", volume="vm-disk"))
    assert ticket.token is not None and ticket.port is not None, ticket.error
    sock = socket.create_connection(("127.0.0.1", ticket.port), timeout=5)
    sock.sendall(MAGIC + bytes.fromhex(ticket.token))
    assert read_answer(sock)[0] == b"G"
    return sock


def _sent_with_tls(logs: Sequence[Mapping[str, object]]) -> list[object]:
    return [event["tls"] for event in logs if event["event"] == "data_channel_sent"]


@pytest.mark.parametrize("encryption", ["tls", "none"])
def test_a_volume_arrives_byte_for_byte_with_its_holes_left_unwritten(target: Path, encryption: Encryption,
                                                                      ) -> None:
    chunks = _chunks()
    with _receiver(target, allow_clear=True) as receiver, capture_logs() as logs:
        written = _send(DirectTickets(receiver), chunks, encryption=encryption)
        assert receiver.received == 1
    assert _sent_with_tls(logs) == [encryption == "tls"]
    assert written == MIB + 4096 + 3 * MIB
    assert target.read_bytes() == _expected(chunks)  # the fresh file's 64 MiB length is cut to the copy's
    assert target.stat().st_blocks * 512 < 6 * MIB  # the 10 MiB of holes were never written


def test_a_ticket_is_good_for_one_transfer_only_and_a_written_file_gets_no_other(target: Path) -> None:
    with _receiver(target) as receiver:
        tickets = DirectTickets(receiver)
        # A copy that leaves the file looking fresh still: a sparse disk's few KiB of data.
        assert _send(tickets, [DataChunk(data=b"boot" * 1024), HoleChunk(length_bytes=8 * MIB)]) is not None
        assert "is being written, or was" in (receiver.issue(
            ReceiveRequest(host="host-b", pool="evacuator", volume="vm-disk")).error or "")
        replay = DirectTickets(receiver, tamper={"token": tickets.issued[0].token})
        assert _send(replay, _chunks()) is None  # refused before any byte moved: the caller uses libvirt
        assert receiver.received == 1


def test_no_second_ticket_for_a_file_under_an_open_ticket(target: Path) -> None:
    with _receiver(target) as receiver:
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
    with _receiver(target, clock=lambda: now[0]) as receiver:
        ticket = receiver.issue(ReceiveRequest(host="host-b", pool="evacuator", volume="vm-disk"))
        now[0] += 61.0
        assert ticket.token is not None and ticket.port is not None
        with socket.create_connection(("127.0.0.1", ticket.port), timeout=5) as raw:
            sock = client_tls(raw, expected_sha256=TLS.sha256, timeout_seconds=5)
            sock.sendall(MAGIC + bytes.fromhex(ticket.token))
            with pytest.raises(ChannelError, match="expired"):
                read_answer(sock)


def test_a_receiver_whose_certificate_is_not_the_tickets_gets_no_token(target: Path) -> None:
    with _receiver(target) as receiver:
        assert _send(DirectTickets(receiver, tamper={"tls_sha256": "0" * 64}), _chunks()) is None
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
    with _receiver(target, allow_clear=allow_clear) as receiver, capture_logs() as logs:
        # hv-02 resolves nowhere here: the daemon's advertised address stands in for it.
        tickets = DirectTickets(receiver, tamper={"address": "127.0.0.1"})
        assert _send(tickets, _chunks(), encryption=encryption, uri=uri) is not None
    assert _sent_with_tls(logs) == [tls]


def test_a_receiver_that_takes_tls_only_refuses_clear_text(target: Path) -> None:
    with _receiver(target) as receiver:
        ticket = receiver.issue(ReceiveRequest(host="host-b", pool="evacuator", volume="vm-disk"))
        assert ticket.token is not None and ticket.port is not None and not ticket.clear_allowed
        with socket.create_connection(("127.0.0.1", ticket.port), timeout=5) as sock:
            sock.sendall(MAGIC + bytes.fromhex(ticket.token))
            with pytest.raises(ChannelError, match="over TLS only"):
                read_answer(sock)
        assert receiver.received == 0


def test_no_ticket_from_an_older_or_absent_daemon_means_libvirt_does_the_copy() -> None:
    chunks = iter(_chunks())
    client = DataChannelClient(SilentTickets(), encryption="auto")
    assert client.send(host="host-b", uri="qemu+tcp://127.0.0.1/system", pool="evacuator", volume="vm-disk",
                       chunks=chunks) is None
    assert next(chunks) is not None  # nothing was taken from the copy


def test_a_volume_name_no_daemon_would_take_goes_through_libvirt_without_asking() -> None:
    tickets = SilentTickets()
    client = DataChannelClient(tickets, encryption="auto")
    assert client.send(host="host-b", uri="qemu+tcp://127.0.0.1/system", pool="evacuator",
                       volume="../etc/passwd", chunks=iter(_chunks())) is None
    assert tickets.asked == []


@pytest.mark.parametrize(("pool", "volume", "host", "error"), [
    ("other", "vm-disk", "host-b", "no volume other/vm-disk"),
    ("evacuator", "vm-disk", "host-c", "this is host-b, not host-c"),
])
def test_tickets_only_for_this_hosts_own_volumes(target: Path, pool: str, volume: str, host: str,
                                                 error: str) -> None:
    with _receiver(target) as receiver:
        ticket = receiver.issue(ReceiveRequest(host=host, pool=pool, volume=volume))
    assert ticket.token is None and ticket.error is not None and error in ticket.error


def test_no_ticket_for_a_volume_that_holds_data(target: Path) -> None:
    target.write_bytes(os.urandom(2 * MIB))
    with _receiver(target) as receiver:
        ticket = receiver.issue(ReceiveRequest(host="host-b", pool="evacuator", volume="vm-disk"))
    assert ticket.token is None and "holds data already" in (ticket.error or "")


def test_the_bytes_go_to_the_file_that_was_checked_whatever_its_name_now_names(target: Path) -> None:
    with _receiver(target) as receiver:
        ticket = receiver.issue(ReceiveRequest(host="host-b", pool="evacuator", volume="vm-disk"))
        target.unlink()
        target.write_bytes(b"")  # another file under the name: never checked, so never written
        assert _send(DirectTickets(receiver, tamper={"token": ticket.token}), _chunks()) is not None
    assert target.read_bytes() == b""


def test_writing_past_a_raw_volumes_capacity_fails_the_copy(target: Path) -> None:
    with _receiver(target, limit_bytes=2 * MIB) as receiver:
        with pytest.raises(HypervisorError, match="would pass the volume's limit of 2097152"):
            _send(DirectTickets(receiver), _chunks())
        assert receiver.received == 0


def test_a_sender_that_stalls_is_dropped_and_the_slot_freed(target: Path) -> None:
    with _receiver(target, allow_clear=True, stall_timeout_seconds=0.5, max_transfers=1) as receiver:
        ticket = receiver.issue(ReceiveRequest(host="host-b", pool="evacuator", volume="vm-disk"))
        assert ticket.token is not None and ticket.port is not None
        with socket.create_connection(("127.0.0.1", ticket.port), timeout=5) as sock:
            sock.sendall(MAGIC + bytes.fromhex(ticket.token))
            assert read_answer(sock)[0] == b"G"
            sock.sendall(DATA + DATA_HEADER.pack(0, MIB) + b"half")  # then nothing more
            began = time.monotonic()
            with pytest.raises(ChannelError, match="timed out"):
                read_answer(sock)
            assert time.monotonic() - began < 5
        target.write_bytes(b"")
        assert _send(DirectTickets(receiver), _chunks(), encryption="none") is not None  # the slot is free


def test_a_sender_that_dies_mid_copy_fails_its_transfer_and_frees_the_slot(target: Path) -> None:
    with _receiver(target, allow_clear=True, max_transfers=1) as receiver, capture_logs() as logs:
        with _hello(receiver) as sock:
            sock.sendall(DATA + DATA_HEADER.pack(0, MIB) + os.urandom(MIB // 2))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not _events(logs, "volume_receive_failed"):
            time.sleep(0.05)
        assert "closed the channel" in str(_events(logs, "volume_receive_failed")[0]["error"])
        assert receiver.received == 0
        target.write_bytes(b"")  # a new file, as the mover's retry makes
        assert _send(DirectTickets(receiver), _chunks(), encryption="none") is not None  # the slot is free


def test_a_busy_receiver_refuses_before_go_and_the_copy_goes_through_libvirt(target: Path,
                                                                             tmp_path: Path) -> None:
    other = tmp_path / "other-disk"
    other.write_bytes(b"")
    files = {"vm-disk": target, "other-disk": other}

    def locate(pool: str, volume: str) -> ReceivableFile:
        return ReceivableFile(path=files[volume], limit_bytes=1 << 40)

    receiver = VolumeReceiver(host="host-b", locate=locate, listen_address="127.0.0.1", port=0, tls=TLS,
                              allow_clear=True, max_transfers=1)
    receiver.start()
    try:
        with _hello(receiver):  # holds the only slot
            chunks = iter(_chunks())
            client = DataChannelClient(DirectTickets(receiver), encryption="none")
            assert client.send(host="host-b", uri="qemu+tcp://127.0.0.1/system", pool="evacuator",
                               volume="other-disk", chunks=chunks) is None
            assert isinstance(next(chunks), DataChunk)  # nothing was taken from the copy
    finally:
        receiver.close()


def test_a_receiver_silent_after_the_token_fails_the_copy_rather_than_racing_libvirt(target: Path) -> None:
    with _receiver(target, allow_clear=True) as receiver, socket.create_server(("127.0.0.1", 0)) as mute:
        tickets = DirectTickets(receiver, tamper={"port": mute.getsockname()[1]})
        with pytest.raises(HypervisorError, match="did not let the copy start"):
            _send(tickets, _chunks(), encryption="none", connect_timeout_seconds=0.5)


def test_a_sender_that_trickles_is_cut_off(target: Path) -> None:
    with _receiver(target, allow_clear=True, stall_timeout_seconds=0.3, min_bytes_per_second=100 * MIB,
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
