"""`evacuator peers`: whose daemon answers digest requests, and the cloud-wide transfer slots held.

What the broker shows of this host and its peers: an operator's view of verification and the caps at work."""

from __future__ import annotations

import argparse
import contextlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from evacuator.peers.cloud_slots import incoming_prefix, slot_queue, total_prefix
from evacuator.peers.messages import responder_queue
from evacuator.settings import Settings, load_settings
from evacuator.wiring.peers import status_connection_for
from notifiers.connection import CONNECTION_ERRORS, ConnectionFactory, queue_consumers
from notifiers.errors import BrokerUnavailable


@dataclass(frozen=True, slots=True, kw_only=True)
class HostStatus:
    host: str
    digests_answered: bool  # its daemon listens for digest requests (else movers read its copies back)
    incoming_slots_held: int | None  # None: incoming caps are per source host (not counted on the broker)
    incoming_slots: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class CloudStatus:
    hosts: tuple[HostStatus, ...]
    total_slots_held: int | None  # None: no cloud-wide total configured
    total_slots: int | None


def read_status(settings: Settings, connect: ConnectionFactory) -> CloudStatus:
    connection = connect()
    try:
        return _read(connection, settings)
    except CONNECTION_ERRORS as exc:
        raise BrokerUnavailable(f"reading the peers' state from the broker failed: {exc!r}") from exc
    finally:
        with contextlib.suppress(*CONNECTION_ERRORS):
            connection.close()


def _read(connection: Any, settings: Settings) -> CloudStatus:
    exchange = settings.broker.peers_exchange
    evacuation = settings.evacuation
    incoming = evacuation.cloud_wide_incoming_cap
    hosts = tuple(HostStatus(
        host=name,
        digests_answered=bool(queue_consumers(connection, responder_queue(exchange, name))),
        incoming_slots_held=None if incoming is None else _held(connection, incoming_prefix(exchange, name),
                                                                incoming),
        incoming_slots=incoming,
    ) for name in [settings.host.name, *(peer.name for peer in settings.peers)])  # fmt: skip
    total = evacuation.max_total_transfers
    total_held = None if total is None else _held(connection, total_prefix(exchange), total)
    return CloudStatus(hosts=hosts, total_slots_held=total_held, total_slots=total)


def _held(connection: Any, prefix: str, slots: int) -> int:
    return sum(bool(queue_consumers(connection, slot_queue(prefix, index))) for index in range(1, slots + 1))


def format_status(status: CloudStatus) -> str:
    def slots(held: int | None, of: int | None) -> str:
        return "not counted" if held is None else f"{held}/{of} held"

    width = max(len(host.host) for host in status.hosts)
    lines = [f"{'host':<{width}}  {'digest daemon':<13}  incoming transfer slots"]
    lines += [f"{h.host:<{width}}  {'answers' if h.digests_answered else 'absent':<13}  "
              f"{slots(h.incoming_slots_held, h.incoming_slots)}" for h in status.hosts]
    lines.append(f"cloud-wide transfer slots: {slots(status.total_slots_held, status.total_slots)}")
    return "\n".join(lines)


def run_peers(settings: Settings, *, as_json: bool) -> int:
    status = read_status(settings, status_connection_for(settings))
    print(json.dumps(asdict(status), indent=2) if as_json else format_status(status))
    return 0


def main(args: argparse.Namespace) -> int:
    return run_peers(load_settings(Path(args.config)), as_json=args.json)
