"""Confirmed, persistent notices as the daemon sends them (outbox, then broker) against publish-and-wait.

Run: `.venv/bin/python bench/bench_notices.py [--url URL] [--notices 2000] [--tenants 100]`. Both runs, in the
same process against the same broker, deliver the same notices (persistent, mandatory, with publisher
confirms) to one durable queue per tenant and count what the queues hold afterwards. The baseline publishes
each encoded notice and waits for its confirm before the next. The daemon's path (notifiers/delivery.py)
first stores each notice durably in its SQLite outbox, so none is lost to a broker outage or a crash, then
delivers them in order, each confirmed before the next, and removes each one once confirmed. The ratio says
what that durability costs; there is no goal to meet.
"""

from __future__ import annotations

import argparse
import secrets
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pika
from pydantic import SecretStr

from evacuator.logs import configure_logging
from notifiers.delivery import OutboxPublisher
from notifiers.messages import EvacuationFailed, encode, notice_route
from notifiers.outbox import Outbox
from notifiers.publisher import NoticePublisher
from notifiers.settings import BrokerSettings
from notifiers.topology import Topology, notice_routing_key, tenant_queue

# Quorum queues keep writing (WAL, segments) for a moment after a purge: each run starts on a quiet broker.
SETTLE_SECONDS = 2.0
HOST = "hv1"
VM = "0b5e1f0a-5c1e-4d2a-9a51-3f7f4c2d9e01"


def notices(tenants: list[str], count: int) -> list[EvacuationFailed]:
    at = datetime.now(UTC)
    return [EvacuationFailed(tenant=tenants[index % len(tenants)], host=HOST, vm_uuid=VM,
                             vm_name=f"vm-{index}", reason="bench", at=at, incarnation=index + 1)
            for index in range(count)]  # fmt: skip


def naive(url: str, exchange: str, messages: list[EvacuationFailed]) -> None:
    """The baseline: a blocking confirm channel waits for each confirm inside basic_publish."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.confirm_delivery()
    for notice in messages:
        properties = pika.BasicProperties(
            content_type="application/json",
            message_id=notice.event_id,
            delivery_mode=pika.DeliveryMode.Persistent,
            type=notice.type,
        )
        tenant, host = notice_route(notice)
        channel.basic_publish(exchange, notice_routing_key(tenant, host, notice.type), encode(notice),
                              properties, mandatory=True)
    connection.close()


def through_outbox(settings: BrokerSettings, messages: list[EvacuationFailed], state_dir: Path) -> None:
    """What the daemon does: the OutboxPublisher over the NoticePublisher, as wiring/incident.py builds it."""
    publisher = OutboxPublisher(NoticePublisher(settings), Outbox(state_dir / "outbox.sqlite"),
                                confirm_timeout_seconds=settings.confirm_timeout_seconds)
    publisher.start()
    try:
        futures = [publisher.publish(notice.tenant, HOST, notice) for notice in messages]
        for future in futures:
            future.result(timeout=600)
    finally:
        publisher.close()


def timed(label: str, run: Callable[[], None], channel: Any, tenants: list[str], count: int) -> float:
    for tenant in tenants:
        channel.queue_purge(tenant_queue(tenant))
    time.sleep(SETTLE_SECONDS)
    started = time.perf_counter()
    run()
    seconds = time.perf_counter() - started
    held = sum(channel.queue_declare(tenant_queue(t), passive=True).method.message_count for t in tenants)
    assert held == count, f"{label}: the queues hold {held} notices, expected {count}"
    print(f"{label:>8}: {count} notices in {seconds:.2f} s = {count / seconds:,.0f}/s (all confirmed, "
          f"{held} queued)")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    parser.add_argument("--notices", type=int, default=2000)
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--queue-type", choices=["quorum", "classic"], default="quorum")
    # A shared broker is noisy: each side runs this often, alternating, and its best time counts.
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    configure_logging(level="warning")  # the publisher logs each notice at info

    token = secrets.token_hex(3)
    settings = BrokerSettings(url=SecretStr(args.url), notices_exchange=f"bench-{token}.notices",
                              replies_exchange=f"bench-{token}.replies", queue_type=args.queue_type)
    topology = Topology.from_settings(settings)
    tenants = [f"bench{token}t{i}" for i in range(args.tenants)]
    messages = notices(tenants, args.notices)
    admin = pika.BlockingConnection(pika.URLParameters(args.url))
    channel = admin.channel()
    try:
        topology.declare_exchanges(channel)
        for tenant in tenants:
            topology.declare_tenant_queue(channel, tenant)
        print(f"{args.notices} notices to {args.tenants} {args.queue_type} queues, persistent, confirmed")
        baseline = outbox = float("inf")
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory(prefix="bench-outbox-") as state:
                baseline = min(baseline, timed(
                    "naive", lambda: naive(args.url, topology.notices_exchange, messages), channel, tenants,
                    args.notices))
                outbox = min(outbox, timed(
                    "daemon", lambda: through_outbox(settings, messages, Path(state)), channel, tenants,
                    args.notices))
    finally:
        for tenant in tenants:
            channel.queue_delete(tenant_queue(tenant))
        for name in (topology.notices_exchange, topology.replies_exchange):
            channel.exchange_delete(name)
        admin.close()
    print(f"best naive {args.notices / baseline:,.0f}/s, best daemon {args.notices / outbox:,.0f}/s")
    print(f"ratio: the daemon's path runs at {baseline / outbox:.2f}x the baseline")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
