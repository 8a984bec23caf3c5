"""A lab host's own evacuator daemon as its peers see it: the digest responder, in a thread or a process.

Tests run it in a thread; the bench runs it as a process (`python -m evacuator.lab.peer ...`), because a real
peer's daemon does not share the mover's interpreter."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from pydantic import SecretStr

from evacuator.digest_responder import DigestResponder
from evacuator.lab.hosts import LabHost
from evacuator.logs import configure_logging
from evacuator.wiring import own_volume_digester
from notifiers.connection import blocking_connection_factory
from notifiers.settings import BrokerSettings


def digest_responder(name: str, uri: str, pool: str, *, broker_url: str, exchange: str) -> DigestResponder:
    connect = blocking_connection_factory(BrokerSettings(url=SecretStr(broker_url)),
                                          connection_name=f"lab-digests-{name}")
    return DigestResponder(connect, host=name, exchange=exchange,
                           digest_volume=own_volume_digester(name, uri, pool))


@contextmanager
def digest_peer(host: LabHost, *, broker_url: str, exchange: str) -> Iterator[DigestResponder]:
    """`host`'s daemon answering digest requests, until the block ends."""
    responder = digest_responder(host.name, host.uri, host.pool, broker_url=broker_url, exchange=exchange)
    responder.start()
    try:
        yield responder
    finally:
        responder.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    for option in ("--name", "--uri", "--pool", "--broker-url", "--exchange"):
        parser.add_argument(option, required=True)
    args = parser.parse_args(argv)
    configure_logging(level="warning")  # stdout carries only the lines the parent reads
    responder = digest_responder(args.name, args.uri, args.pool, broker_url=args.broker_url,
                                 exchange=args.exchange)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    responder.start()
    print("ready", flush=True)  # the parent waits for this line before it measures anything
    with suppress(KeyboardInterrupt):
        stop.wait()
    responder.close()
    print(f"answered {responder.answered}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
