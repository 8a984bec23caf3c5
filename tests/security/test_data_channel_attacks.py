"""Attacks on the data channel (issue 18, item 2), against host-b's daemon as the service wires it from its
settings (evacuator/wiring/peers.py: its digest answers on the real broker and its data channel on real
sockets), real libvirt lab hosts, and host-a's mover as the service wires it, moving a VM with the real cold
migrator. On loopback, host-a is 127.0.0.1 and the attackers bind other 127.x addresses.

Before: the hello's timeout applied to each read (a byte every few seconds held a connection for minutes) and
the TLS handshake had no overall limit; 16 such connections filled every place for connections without a
ticket, and a clear-text mover, whose token had gone before the daemon closed on it, failed its copy (the move
rolled back); the port listened on 0.0.0.0 and took connections from anyone; `encryption: auto`, the default,
took clear text from anyone.
"""

from __future__ import annotations

import random
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
from structlog.testing import capture_logs

from evacuator.lab.hosts import LabHost, pool_volumes
from evacuator.lab.vms import create_vm, sha256_of_volume, volume_name
from evacuator.migrate.cold import ColdMigrator
from evacuator.peers.own_host import PeerServices
from evacuator.settings import Settings
from evacuator.transfer.receiver import HELLO_TIMEOUT_SECONDS, VolumeReceiver
from evacuator.transfer.wire import MAGIC, TOKEN_BYTES, ChannelError, ChannelRefused, read_answer
from evacuator.wiring.peers import open_host_for, peer_services
from notifiers.settings import BrokerSettings
from tests.unit.test_data_channel_guards import client_hello, seconds_until_closed

pytestmark = pytest.mark.integration

MIB = 1 << 20
DRIP_EVERY_SECONDS = 2.0
ATTACKERS = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")  # peers' addresses, in (a)
CONNECTIONS_PER_ATTACKER = 10


def _settings(me: LabHost, peer: LabHost, broker: BrokerSettings, **data_channel: Any) -> Settings:
    """A host's settings as an admin writes them: the data channel's defaults but for a free port."""
    user = broker.url.get_secret_value().split("://", 1)[1].split(":", 1)[0]  # the lab's hosts share one user
    return Settings.model_validate(
        {
            "host": {
                "name": me.name,
                "libvirt_uri": me.uri,
                "storage_pool": me.pool,
                "migration_address": "127.0.0.1",
            },
            "peers": [
                {"name": peer.name, "libvirt_uri": peer.uri, "storage_pool": peer.pool, "broker_user": user}
            ],
            "broker": {"url": broker.url.get_secret_value(), "peers_exchange": broker.peers_exchange},
            "data_channel": {"port": 0, **data_channel},
        }
    )


@contextmanager
def _daemon(settings: Settings) -> Iterator[VolumeReceiver]:
    """The host's daemon serving its peers, as `evacuator run` wires it."""
    services: PeerServices = peer_services(settings)
    services.start()
    try:
        assert services.receiver is not None
        yield services.receiver
    finally:
        services.close()


def _move(host_a: LabHost, host_b: LabHost, broker: BrokerSettings, name: str) -> str:
    """host-a's mover moves a stopped VM with a 6 MiB disk to host-b; the disk's digest."""
    data = random.Random(name).randbytes(6 * MIB + 513)
    uuid = create_vm(
        host_a.uri,
        host_a.pool,
        name=name,
        tenant="acme",
        window_seconds=60,
        disk_bytes=64 * MIB,
        data=data,
        mac="52:54:00:aa:00:71",
        start=False,
    )
    expected = sha256_of_volume(host_a.uri, host_a.pool, volume_name(name))
    open_host = open_host_for(_settings(host_a, host_b, broker))
    with open_host(host_a.name) as source, open_host(host_b.name) as destination:
        ColdMigrator(
            source=source,
            destination=destination,
            clock=lambda: datetime.now(UTC),
            shutdown_timeout_seconds=0.3,
            sleep=time.sleep,
            on_step=lambda _event: None,
            poll_interval_seconds=0.1,
        ).move(uuid)
        assert source.find_vm(uuid) is None and destination.find_vm(uuid) is not None
    return expected


def _sent(logs: Sequence[Mapping[str, Any]]) -> list[tuple[str, bool]]:
    return [(e["volume"], e["tls"]) for e in logs if e["event"] == "data_channel_sent"]


def _tls(sock: socket.socket) -> ssl.SSLSocket:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # an attacker pins nothing
    return context.wrap_socket(sock)


class Dripper(threading.Thread):
    """One attacker's connection from `source`, a byte every 2 s: of its TLS handshake (stalled), or of its
    hello inside a TLS session it completed."""

    def __init__(self, port: int, source: str, *, in_handshake: bool) -> None:
        super().__init__(daemon=True)
        self._sock = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
        self._in_handshake = in_handshake
        self.closed_after: float | None = None

    def run(self) -> None:
        began = time.monotonic()
        with self._sock:
            try:
                sock, payload = (
                    (self._sock, client_hello())
                    if self._in_handshake
                    else (_tls(self._sock), MAGIC + bytes(TOKEN_BYTES))
                )
                seconds_until_closed(
                    sock, payload, every_seconds=DRIP_EVERY_SECONDS, limit_seconds=3 * HELLO_TIMEOUT_SECONDS
                )
            except OSError:
                pass  # closed before its handshake ended
        self.closed_after = time.monotonic() - began


def test_dripping_connections_neither_stop_a_movers_copy_nor_outlive_the_hello_deadline(
    clean_lab_hosts: tuple[LabHost, ...],
    broker_settings: BrokerSettings,
) -> None:
    host_a, host_b = clean_lab_hosts
    settings = _settings(host_b, host_a, broker_settings, allow_from=["127.0.0.1", *ATTACKERS])
    with _daemon(settings) as receiver, capture_logs() as logs:
        drippers = [
            Dripper(receiver.port, source, in_handshake=n % 2 == 0)
            for source in ATTACKERS
            for n in range(CONNECTIONS_PER_ATTACKER)
        ]
        for dripper in drippers:
            dripper.start()
        time.sleep(1.0)  # every dripper in place, half of them mid-TLS-handshake
        expected = _move(host_a, host_b, broker_settings, "dripped-on")
        assert receiver.received == 1
        for dripper in drippers:
            dripper.join(3 * HELLO_TIMEOUT_SECONDS)
    assert _sent(logs) == [(volume_name("dripped-on"), True)]  # through the channel, not libvirt's upload
    assert sha256_of_volume(host_b.uri, host_b.pool, volume_name("dripped-on")) == expected
    closed = sorted(d.closed_after for d in drippers if d.closed_after is not None)
    assert len(closed) == len(drippers)
    # 4 of each address's 10 wait for their hello, closed by its deadline; the others at once.
    assert len([t for t in closed if t < 1.0]) == len(ATTACKERS) * (CONNECTIONS_PER_ATTACKER - 4)
    held = closed[-len(ATTACKERS) * 4 :]
    assert min(held) > HELLO_TIMEOUT_SECONDS - 2.0 and max(held) < HELLO_TIMEOUT_SECONDS + 1.0


def test_a_connection_from_an_address_that_is_no_peers_is_refused_at_once(
    clean_lab_hosts: tuple[LabHost, ...],
    broker_settings: BrokerSettings,
) -> None:
    host_a, host_b = clean_lab_hosts
    with _daemon(_settings(host_b, host_a, broker_settings)) as receiver, capture_logs() as logs:
        for _ in range(20):
            with socket.create_connection(
                ("127.0.0.1", receiver.port), timeout=5, source_address=("127.0.0.9", 0)
            ) as stranger:
                began = time.monotonic()
                with pytest.raises((ChannelError, OSError)):  # closed: no byte back, not even TLS's
                    stranger.sendall(client_hello())
                    read_answer(stranger)
                assert time.monotonic() - began < 0.5
        _move(host_a, host_b, broker_settings, "among-strangers")  # host-a, a peer, still copies
    refused = [e for e in logs if e["event"] == "data_channel_connection_refused"]
    assert [(e["peer"], e["reason"]) for e in refused] == [("127.0.0.9", "not a peer's address")]  # once
    assert _sent(logs) == [(volume_name("among-strangers"), True)]


def test_by_default_a_copy_goes_over_tls_and_clear_text_is_refused(
    clean_lab_hosts: tuple[LabHost, ...],
    broker_settings: BrokerSettings,
) -> None:
    host_a, host_b = clean_lab_hosts
    settings = _settings(host_b, host_a, broker_settings)
    assert settings.data_channel.encryption == "tls"
    with _daemon(settings) as receiver, capture_logs() as logs:
        expected = _move(host_a, host_b, broker_settings, "encrypted")
        with socket.create_connection(("127.0.0.1", receiver.port), timeout=5) as clear:
            clear.sendall(MAGIC)
            with pytest.raises(ChannelRefused, match="over TLS only"):
                read_answer(clear)
        assert receiver.received == 1
    assert _sent(logs) == [(volume_name("encrypted"), True)]
    assert sha256_of_volume(host_b.uri, host_b.pool, volume_name("encrypted")) == expected
    assert pool_volumes(host_b) == [volume_name("encrypted")]
