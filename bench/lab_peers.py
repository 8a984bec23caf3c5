"""The bench's lab hosts' own daemons, each a process of its own, and how a mover opens a host as its peer."""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pika

from evacuator.hypervisor.libvirt.host import LibvirtHost, open_libvirt_host
from evacuator.lab.broker import ensure_broker
from evacuator.lab.hosts import LabHost
from evacuator.peers.messages import PeerTrust
from evacuator.peers.rpc import PeerClient
from evacuator.transfer.sender import DataChannelClient
from evacuator.transfer.wire import Encryption
from notifiers.connection import blocking_connection_factory
from notifiers.settings import BrokerSettings, url_user

MIB = 1 << 20

OpenPeer = Callable[[LabHost], LibvirtHost]
"""Opens a host as a mover on another does: asking its daemon for digests of its copies and, unless the run
says otherwise, copying through its data channel."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Peers:
    """How a mover opens a peer: through its data channel (`channel`), or uploading through libvirt."""

    channel: OpenPeer
    libvirt: OpenPeer


@contextmanager
def peer_daemons(hosts: Sequence[LabHost], base: Path, data_channel: Encryption) -> Iterator[Peers]:
    """Each host's daemon in a process of its own, on a run-private exchange."""
    broker = ensure_broker(base / "broker")
    exchange = f"bench-{secrets.token_hex(3)}.peers"
    settings = BrokerSettings.model_validate({"url": broker.url, "peers_exchange": exchange})
    daemons = {}
    try:
        for host in hosts:
            daemon = daemons[host.name] = subprocess.Popen(
                [sys.executable, "-m", "evacuator.lab.peer", "--name", host.name, "--uri", host.uri,
                 "--pool", host.pool, "--broker-url", broker.url, "--exchange", exchange,
                 "--data-channel", data_channel, "--log-level", "info"],
                stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            assert daemon.stdout is not None
            if daemon.stdout.readline().strip() != "ready":
                raise SystemExit(f"{host.name}'s digest daemon did not start")
        trust = PeerTrust.shared(url_user(broker.url), [host.name for host in hosts])  # one lab user for all
        client = PeerClient(blocking_connection_factory(settings, connection_name="bench-digests"),
                            trust=trust, exchange=exchange, timeout_base_seconds=60,
                            min_bytes_per_second=10 * MIB)  # fmt: skip
        sender = DataChannelClient(client, encryption=data_channel)
        yield Peers(
            channel=lambda peer: open_libvirt_host(peer.name, peer.uri, peer.pool, peer_digests=client,
                                                   volume_sender=sender),
            libvirt=lambda peer: open_libvirt_host(peer.name, peer.uri, peer.pool, peer_digests=client),
        )
        print(f"    (copies sent through a data channel: {sender.sent_volumes})")
    finally:
        for name, daemon in daemons.items():
            daemon.terminate()
            print(f"    ({name}'s daemon {daemon.communicate(timeout=30)[0].strip()})")
        with pika.BlockingConnection(pika.URLParameters(broker.url)) as connection:
            connection.channel().exchange_delete(exchange)
