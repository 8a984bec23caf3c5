"""Confirmed, persistent fan-out of notices: pipelined confirms against the naive publish-and-wait baseline.

Run: `.venv/bin/python bench/bench_notices.py [--url URL] [--notices 10000] [--tenants 100]`. Both runs, in
the same process against the same broker, publish the same notices (persistent, mandatory, with publisher
confirms) to one durable queue per tenant and count what the queues hold afterwards. The baseline waits for
each confirm before the next publish; the pipelined run keeps up to --window notices unconfirmed.
"""

from __future__ import annotations

import argparse
import secrets
import time
from datetime import UTC, datetime
from typing import Any

import pika

from notifiers.fanout import Outgoing, publish_all
from notifiers.messages import EvacuationFailed, encode
from notifiers.topology import Topology, notice_routing_key, tenant_queue

GOAL_RATIO = 10.0
# Quorum queues keep writing (WAL, segments) for a moment after a purge: each run starts on a quiet broker.
SETTLE_SECONDS = 2.0
VM = "0b5e1f0a-5c1e-4d2a-9a51-3f7f4c2d9e01"


def notices(tenants: list[str], count: int) -> list[Outgoing]:
    at = datetime.now(UTC)
    out = []
    for index in range(count):
        tenant = tenants[index % len(tenants)]
        notice = EvacuationFailed(tenant=tenant, host="hv1", vm_uuid=VM, vm_name=f"vm-{index}",
                                  reason="bench", at=at, incarnation=index + 1)  # fmt: skip
        out.append(Outgoing(routing_key=notice_routing_key(tenant, "hv1", notice.type), body=encode(notice),
                            message_id=notice.event_id, notice_type=notice.type))  # fmt: skip
    return out


def naive(url: str, exchange: str, messages: list[Outgoing]) -> None:
    """The baseline: a blocking confirm channel waits for each confirm inside basic_publish."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.confirm_delivery()
    for message in messages:
        properties = pika.BasicProperties(
            content_type="application/json",
            message_id=message.message_id,
            delivery_mode=pika.DeliveryMode.Persistent,
            type=message.notice_type,
        )
        channel.basic_publish(exchange, message.routing_key, message.body, properties, mandatory=True)
    connection.close()


def queued(channel: Any, tenants: list[str]) -> int:
    return sum(channel.queue_declare(tenant_queue(t), passive=True).method.message_count for t in tenants)


def timed(label: str, run: Any, channel: Any, tenants: list[str], count: int) -> float:
    for tenant in tenants:
        channel.queue_purge(tenant_queue(tenant))
    time.sleep(SETTLE_SECONDS)
    started = time.perf_counter()
    run()
    seconds = time.perf_counter() - started
    held = queued(channel, tenants)
    assert held == count, f"{label}: the queues hold {held} notices, expected {count}"
    rate = count / seconds
    print(f"{label:>10}: {count} notices in {seconds:.2f} s = {rate:,.0f}/s (all confirmed, {held} queued)")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    parser.add_argument("--notices", type=int, default=10_000)
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--window", type=int, default=2000, help="unconfirmed notices in flight (pipelined)")
    parser.add_argument("--queue-type", choices=["quorum", "classic"], default="quorum")
    # A shared broker is noisy: each side runs this often, alternating, and its best time counts.
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    token = secrets.token_hex(3)
    topology = Topology(notices_exchange=f"bench-{token}.notices", replies_exchange=f"bench-{token}.replies",
                        queue_type=args.queue_type)  # fmt: skip
    tenants = [f"bench{token}t{i}" for i in range(args.tenants)]
    messages = notices(tenants, args.notices)
    admin = pika.BlockingConnection(pika.URLParameters(args.url))
    channel = admin.channel()
    try:
        topology.declare_exchanges(channel)
        for tenant in tenants:
            topology.declare_tenant_queue(channel, tenant)
        print(f"{args.notices} notices to {args.tenants} {args.queue_type} queues, persistent, confirmed")
        exchange = topology.notices_exchange
        baseline, fast = float("inf"), float("inf")
        for _ in range(args.repeat):
            run_naive = lambda: naive(args.url, exchange, messages)  # noqa: E731
            run_fast = lambda: publish_all(args.url, exchange, messages, window=args.window)  # noqa: E731
            baseline = min(baseline, timed("naive", run_naive, channel, tenants, args.notices))
            fast = min(fast, timed("pipelined", run_fast, channel, tenants, args.notices))
    finally:
        for tenant in tenants:
            channel.queue_delete(tenant_queue(tenant))
        for name in (topology.notices_exchange, topology.replies_exchange):
            channel.exchange_delete(name)
        admin.close()
    ratio = baseline / fast
    print(f"best naive {args.notices / baseline:,.0f}/s, best pipelined {args.notices / fast:,.0f}/s")
    print(f"ratio: {ratio:.1f}x the baseline (goal >= {GOAL_RATIO:.0f}x)")
    return 0 if ratio >= GOAL_RATIO else 1


if __name__ == "__main__":
    raise SystemExit(main())
