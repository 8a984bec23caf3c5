"""The data channel's guards before a ticket is shown, over real loopback sockets: where it listens and
whether it takes clear text as the wiring builds it from the settings, the hello's total deadline, who may
connect and how many at once, rate-limited refusals, and the mover's fallback on every failure before its
token goes."""

from __future__ import annotations

import ipaddress
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from evacuator.errors import HypervisorError
from evacuator.settings import Settings
from evacuator.transfer.admission import Admission, RateLimitedLog, allowed_networks, peer_address
from evacuator.transfer.chunks import DataChunk
from evacuator.transfer.receiver import VolumeReceiver
from evacuator.transfer.sender import DataChannelClient
from evacuator.transfer.wire import (
    MAGIC,
    READY,
    TOKEN_BYTES,
    ChannelError,
    ChannelRefused,
    client_tls,
    error_frame,
    read_answer,
)
from evacuator.wiring.peers import channel_addresses, volume_receiver
from tests.unit.test_data_channel import TLS, DirectTickets, disk_chunks, fresh_volume, receiving, send

HELLO_SECONDS = 1.0
MIB = 1 << 20


@pytest.fixture
def target(tmp_path: Path) -> Path:
    return fresh_volume(tmp_path)


def _events(logs: Sequence[Mapping[str, object]], name: str) -> list[Mapping[str, object]]:
    return [event for event in logs if event["event"] == name]


def client_hello() -> bytes:
    """The bytes a TLS client opens with, to send as slowly as an attacker likes."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    client = context.wrap_bio(ssl.MemoryBIO(), outgoing := ssl.MemoryBIO())
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


def seconds_until_closed(sock: socket.socket, payload: bytes, *, every_seconds: float = 0.1,
                          first_after_seconds: float = 0.0, limit_seconds: float = 5.0) -> float:
    """Drips `payload` a byte at a time (again and again) until the receiver closes the connection."""
    began = time.monotonic()
    time.sleep(first_after_seconds)
    sock.settimeout(every_seconds)
    for index in range(1 << 20):
        if time.monotonic() - began > limit_seconds:
            return float("inf")
        try:
            sock.send(payload[index % len(payload):][:1])
            if select.select([sock], [], [], every_seconds)[0] and not sock.recv(4096):
                return time.monotonic() - began
        except TimeoutError:
            continue  # TLS records that are not data (session tickets): nothing closed
        except OSError:
            return time.monotonic() - began
    raise AssertionError("unreachable")


@pytest.mark.parametrize("where", ["clear_hello", "tls_handshake", "hello_inside_tls"])
def test_a_dripped_hello_is_dropped_at_the_total_deadline_whatever_it_drips(target: Path, where: str) -> None:
    with receiving(target, allow_clear=True, hello_timeout_seconds=HELLO_SECONDS) as receiver, \
            socket.create_connection(("127.0.0.1", receiver.port), timeout=5) as raw:  # fmt: skip
        if where == "clear_hello":
            closed = seconds_until_closed(raw, MAGIC + bytes(TOKEN_BYTES))
        elif where == "tls_handshake":  # its first byte late, the rest a byte at a time
            closed = seconds_until_closed(raw, client_hello(), first_after_seconds=0.7)
        else:
            began = time.monotonic()
            tls = client_tls(raw, expected_sha256=TLS.sha256, timeout_seconds=5)
            seconds_until_closed(tls, MAGIC + bytes(TOKEN_BYTES))
            closed = time.monotonic() - began
    assert HELLO_SECONDS - 0.2 < closed < HELLO_SECONDS + 0.4


def _held(port: int, source: str, count: int) -> list[socket.socket]:
    return [socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
            for _ in range(count)]


def _closed_at_once(sock: socket.socket) -> bool:
    sock.settimeout(0.5)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_one_address_cannot_take_the_places_every_other_peer_needs(target: Path) -> None:
    with receiving(target, allow_from=("127.0.0.1", "127.0.0.2"), hello_timeout_seconds=30) as receiver, \
            capture_logs() as logs, ExitStack() as held:  # fmt: skip
        attackers = [held.enter_context(sock) for sock in _held(receiver.port, "127.0.0.2", 40)]
        assert [_closed_at_once(sock) for sock in attackers].count(True) == 36  # 4 wait for their hello
        assert send(DirectTickets(receiver), disk_chunks()) is not None
        assert receiver.received == 1
    refused = _events(logs, "data_channel_connection_refused")
    assert [(e["peer"], e["reason"]) for e in refused] == [
        ("127.0.0.2", "too many connections from this address without a ticket")]  # once a minute, not 36


def test_a_connection_from_no_peers_address_is_refused_at_once(target: Path) -> None:
    with receiving(target, allow_from=("127.0.0.1",)) as receiver, capture_logs() as logs:
        (stranger,) = _held(receiver.port, "127.0.0.3", 1)
        with stranger:
            assert _closed_at_once(stranger)
    assert [(e["peer"], e["reason"]) for e in _events(logs, "data_channel_connection_refused")] == [
        ("127.0.0.3", "not a peer's address")]


@pytest.mark.parametrize(("source", "through_the_channel"), [("127.0.0.2", True), (None, False)])
def test_a_mover_connects_from_its_migration_address_which_its_peers_allow(
    target: Path, source: str | None, through_the_channel: bool,
) -> None:
    with receiving(target, allow_from=("127.0.0.2",)) as receiver:
        mover = DataChannelClient(DirectTickets(receiver), encryption="tls", source_address=source)
        written = mover.send(host="host-b", uri="qemu+tcp://127.0.0.1/system", pool="evacuator",
                             volume="vm-disk", chunks=iter(disk_chunks()))
    assert (written is not None) is through_the_channel


def test_places_are_counted_per_address_and_in_all_and_given_back() -> None:
    admission = Admission(host="host-b", allowed=[ipaddress.ip_network("10.0.0.0/24")], max_unproven=3,
                          max_unproven_per_address=2, said=RateLimitedLog())
    assert [admission.admit(a) for a in ("10.0.0.1", "10.0.0.1", "10.0.0.1")] == [
        ipaddress.ip_address("10.0.0.1")] * 2 + [None]
    assert admission.admit("10.0.0.2") is not None
    assert admission.admit("10.0.0.3") is None  # all 3 places taken
    admission.release(ipaddress.ip_address("10.0.0.1"))
    assert admission.admit("10.0.0.3") is not None
    assert admission.admit("10.0.1.1") is None  # not in the allowed network


def test_refusals_are_logged_once_an_interval_per_address_and_a_bounded_number_in_all() -> None:
    now = [0.0]
    said = RateLimitedLog(interval_seconds=60, lines_per_interval=3, clock=lambda: now[0])
    a, b = ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("10.0.0.2")
    with capture_logs() as logs:
        for _ in range(5):
            said.warning("refused", address=a)
        said.warning("refused", address=b)
        for n in range(3, 10):
            said.warning("refused", address=ipaddress.ip_address(f"10.0.0.{n}"))
        now[0] = 61.0
        said.warning("refused", address=a)
    assert [(e["peer"], e["not_logged"]) for e in logs] == [
        ("10.0.0.1", 0), ("10.0.0.2", 0), ("10.0.0.3", 0), ("10.0.0.1", 4)]


def test_peers_names_are_resolved_at_start_and_one_that_does_not_resolve_is_left_out() -> None:
    names = {"hv-a": ["10.1.0.1", "fd00::1"], "hv-b": ["10.1.0.2"]}

    def resolve(name: str) -> list[str]:
        if name not in names:
            raise OSError(f"{name}: no such host")
        return names[name]

    with capture_logs() as logs:
        allowed = allowed_networks(["hv-a", "hv-b", "hv-gone", "10.2.0.0/24", "10.1.0.2"], host="host-b",
                                   resolve=resolve)
    assert [str(network) for network in allowed] == [
        "10.1.0.1/32", "fd00::1/128", "10.1.0.2/32", "10.2.0.0/24"]
    assert [e["peer_address"] for e in _events(logs, "data_channel_peer_unresolved")] == ["hv-gone"]


def test_an_ipv4_peer_on_a_dual_stack_socket_counts_as_its_ipv4_address() -> None:
    assert peer_address("::ffff:10.1.0.1") == ipaddress.ip_address("10.1.0.1")


Script = Callable[[socket.socket], None]


def _closes_at_once(conn: socket.socket) -> None:
    conn.close()


def _answers_http(conn: socket.socket) -> None:
    conn.recv(4096)
    conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")


def _refuses(conn: socket.socket) -> None:
    conn.recv(len(MAGIC))
    conn.sendall(error_frame("this host takes copies over TLS only"))


def _silent_after_the_token(conn: socket.socket) -> None:
    conn.recv(len(MAGIC))
    conn.sendall(READY)
    conn.recv(TOKEN_BYTES)
    time.sleep(1.0)


@contextmanager
def _scripted(script: Script | None) -> Iterator[int]:
    """A port where a fake receiver plays `script` on each connection; None: it never accepts (the kernel
    still completes the TCP handshake), so it never answers anything."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        stop = threading.Event()

        def serve() -> None:
            server.settimeout(0.1)
            while not stop.is_set():
                try:
                    conn, _ = server.accept()
                except TimeoutError:
                    continue
                with conn:
                    assert script is not None
                    script(conn)

        thread = threading.Thread(target=serve, daemon=True) if script is not None else None
        if thread is not None:
            thread.start()
        try:
            yield server.getsockname()[1]
        finally:
            stop.set()
            if thread is not None:
                thread.join(5)


def _closed_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as gone:
        return int(gone.getsockname()[1])


@pytest.mark.parametrize("encryption", ["tls", "none"])
@pytest.mark.parametrize("script", [_closes_at_once, _answers_http, _refuses, None, "closed port"],
                         ids=["closes_at_once", "not_tls", "refuses", "never_answers", "connection_refused"])
def test_every_failure_before_the_token_goes_leaves_the_copy_to_libvirt(
    target: Path, encryption: str, script: Script | str | None,
) -> None:
    with receiving(target, allow_clear=True) as receiver, ExitStack() as stack, capture_logs() as logs:
        port = _closed_port() if script == "closed port" else stack.enter_context(
            _scripted(None if script is None else script))  # type: ignore[arg-type]
        chunks = iter(disk_chunks())
        client = DataChannelClient(DirectTickets(receiver, tamper={"port": port}), encryption=encryption,
                                   connect_timeout_seconds=0.5)  # type: ignore[arg-type]
        assert client.send(host="host-b", uri="qemu+tcp://127.0.0.1/system", pool="evacuator",
                           volume="vm-disk", chunks=chunks) is None
        assert isinstance(next(chunks), DataChunk)  # nothing was taken from the copy
    assert len(_events(logs, "data_channel_unavailable")) == 1


def test_a_receiver_silent_after_the_token_fails_the_copy_rather_than_racing_libvirt(target: Path) -> None:
    with receiving(target, allow_clear=True) as receiver, _scripted(_silent_after_the_token) as port:
        tickets = DirectTickets(receiver, tamper={"port": port})
        with pytest.raises(HypervisorError, match="did not let the copy start"):
            send(tickets, disk_chunks(), encryption="none", connect_timeout_seconds=0.5)


def _settings(**data_channel: object) -> Settings:
    return Settings.model_validate({
        "host": {"name": "host-b", "libvirt_uri": "test:///default", "migration_address": "127.0.0.1"},
        "peers": [{"name": "host-a", "libvirt_uri": "qemu+tcp://127.0.0.2/system"}],
        "data_channel": {"port": 0, **data_channel},
    })


@contextmanager
def _wired(settings: Settings) -> Iterator[VolumeReceiver]:
    addresses = channel_addresses(settings)
    assert addresses is not None
    receiver = volume_receiver(settings.host, settings.data_channel, addresses, min_bytes_per_second=MIB)
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.close()


def _answer_to_clear_text(port: int, *, source: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0)) as sock:
        sock.sendall(MAGIC)
        try:
            return read_answer(sock)[0]
        except ChannelRefused as exc:
            return str(exc).encode()
        except (ChannelError, OSError):
            return b"closed"


def test_by_default_the_channel_listens_on_the_hosts_migration_address_only() -> None:
    with _wired(_settings()) as receiver:
        with pytest.raises(ConnectionRefusedError):  # not every interface: 127.0.0.2 is another address
            socket.create_connection(("127.0.0.2", receiver.port), timeout=5).close()
        with socket.create_connection(("127.0.0.1", receiver.port), timeout=5,
                                      source_address=("127.0.0.2", 0)):
            pass


@pytest.mark.parametrize(("listen", "peer"), [("::1", "::1"), ("localhost", "127.0.0.1")])
def test_the_channel_listens_on_an_ipv6_address_or_a_name_resolved_at_start(listen: str, peer: str) -> None:
    settings = _settings(listen_address=listen, allow_from=[peer], encryption="none")
    with _wired(settings) as receiver:
        family = socket.AF_INET6 if ":" in peer else socket.AF_INET
        with socket.socket(family) as sock:
            sock.settimeout(5)
            sock.connect((peer, receiver.port))
            sock.sendall(MAGIC)
            assert read_answer(sock)[0] == READY


def test_by_default_the_channel_takes_connections_from_its_peers_addresses_only() -> None:
    with _wired(_settings(encryption="none")) as receiver:
        assert _answer_to_clear_text(receiver.port, source="127.0.0.2") == READY  # host-a's address
        assert _answer_to_clear_text(receiver.port, source="127.0.0.1") == b"closed"


@pytest.mark.parametrize(("encryption", "clear_text"), [
    (None, False),  # the default: TLS
    ("tls", False),
    ("auto", False),  # an older file's setting takes no clear text either
    ("none", True),  # the admin's word for a trusted migration network
])
def test_the_channel_takes_clear_text_only_when_the_admin_writes_none(encryption: str | None,
                                                                      clear_text: bool) -> None:
    settings = _settings() if encryption is None else _settings(encryption=encryption)
    with _wired(settings) as receiver:
        answer = _answer_to_clear_text(receiver.port, source="127.0.0.2")
    assert (answer == READY) is clear_text
    if not clear_text:
        assert b"over TLS only" in answer
