"""A lab host's own evacuator daemon as its peers see it: digest answers and the data channel, in a thread
or a process.

Tests run it in a thread; the bench runs it as a process (`python -m evacuator.lab.peer ...`), because a real
peer's daemon does not share the mover's interpreter."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress

from pydantic import SecretStr

from evacuator.lab.hosts import LabHost
from evacuator.logs import configure_logging
from evacuator.peers.messages import PeerTrust
from evacuator.peers.own_host import PeerServices
from evacuator.peers.responder import DigestResponder
from evacuator.settings import DataChannelSettings, HostSettings
from evacuator.transfer.wire import Encryption
from evacuator.wiring.peers import ChannelAddresses, build_peer_services
from notifiers.settings import BrokerSettings, url_user


def lab_daemon(name: str, uri: str, pool: str, *, broker_url: str, exchange: str,
               data_channel: Encryption | None, allow_from: Sequence[str] = ("127.0.0.1",)) -> PeerServices:
    """The daemon's own peer services, its data channel on a free loopback port taking connections from
    `allow_from` (the lab's hosts are all 127.0.0.1) (None: no data channel)."""
    channel = (DataChannelSettings(enabled=False) if data_channel is None
               else DataChannelSettings(listen_address="127.0.0.1", port=0, encryption=data_channel))
    return build_peer_services(
        host=HostSettings(name=name, libvirt_uri=uri, storage_pool=pool),
        broker=BrokerSettings(url=SecretStr(broker_url), peers_exchange=exchange),
        # The lab's daemons all connect as one user: whoever asks as that user is a peer.
        trust=PeerTrust.shared(url_user(broker_url), (name,)),
        channel=channel, channel_addresses=ChannelAddresses(listen="127.0.0.1", advertise=None,
                                                            allow_from=tuple(allow_from)),
        min_bytes_per_second=10 * 1024 * 1024, connection_name=f"lab-digests-{name}",
    )


@contextmanager
def host_daemon(host: LabHost, *, broker_url: str, exchange: str, data_channel: Encryption | None = "tls",
                allow_from: Sequence[str] = ("127.0.0.1",)) -> Iterator[PeerServices]:
    """`host`'s daemon serving its peers, until the block ends."""
    daemon = lab_daemon(host.name, host.uri, host.pool, broker_url=broker_url, exchange=exchange,
                        data_channel=data_channel, allow_from=allow_from)
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.close()


@contextmanager
def digest_peer(host: LabHost, *, broker_url: str, exchange: str) -> Iterator[DigestResponder]:
    """`host`'s daemon answering digest requests (and no data channel), until the block ends."""
    with host_daemon(host, broker_url=broker_url, exchange=exchange, data_channel=None) as daemon:
        yield daemon.digests


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    for option in ("--name", "--uri", "--pool", "--broker-url", "--exchange"):
        parser.add_argument(option, required=True)
    parser.add_argument("--data-channel", choices=("auto", "tls", "none", "off"), default="off")
    parser.add_argument("--allow-from", action="append", default=None,
                        help="an address the data channel takes connections from (default 127.0.0.1)")
    parser.add_argument("--log-level", choices=("info", "warning"), default="warning")
    args = parser.parse_args(argv)
    configure_logging(level=args.log_level)  # to stderr: stdout carries only the lines the parent reads
    data_channel: Encryption | None = None if args.data_channel == "off" else args.data_channel
    daemon = lab_daemon(args.name, args.uri, args.pool, broker_url=args.broker_url, exchange=args.exchange,
                        data_channel=data_channel, allow_from=args.allow_from or ("127.0.0.1",))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    daemon.start()
    print("ready", flush=True)  # the parent waits for this line before it measures anything
    with suppress(KeyboardInterrupt):
        stop.wait()
    daemon.close()
    received = 0 if daemon.receiver is None else daemon.receiver.received
    print(f"answered {daemon.digests.answered} digest requests, received {received} copies", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
