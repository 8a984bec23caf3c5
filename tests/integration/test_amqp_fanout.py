"""Pipelined confirmed fan-out (as bench/bench_notices.py measures) delivers all, in order per queue."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

import pika
import pytest

from notifiers.errors import UnroutableNotice
from notifiers.fanout import Outgoing, publish_all
from notifiers.messages import EvacuationFailed, encode, parse_notice
from notifiers.settings import BrokerSettings
from notifiers.topology import Topology, notice_routing_key, tenant_queue
from tests.fixtures.broker import BrokerJanitor

pytestmark = pytest.mark.integration

VM = "0b5e1f0a-5c1e-4d2a-9a51-3f7f4c2d9e01"


def outgoing(tenant: str, index: int) -> Outgoing:
    notice = EvacuationFailed(tenant=tenant, host="hv1", vm_uuid=VM, vm_name=f"vm-{index}", reason="r",
                              at=datetime.now(UTC), incarnation=index + 1)  # fmt: skip
    return Outgoing(routing_key=notice_routing_key(tenant, "hv1", notice.type), body=encode(notice),
                    message_id=notice.event_id, notice_type=notice.type)  # fmt: skip


def test_every_notice_is_confirmed_and_each_queue_keeps_the_order(
    broker_settings: BrokerSettings, broker_janitor: BrokerJanitor
) -> None:
    url, topology = broker_settings.url.get_secret_value(), Topology.from_settings(broker_settings)
    tenants = [f"fan{secrets.token_hex(3)}{i}" for i in range(3)]
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    topology.declare_exchanges(channel)
    for tenant in tenants:
        broker_janitor.queue(tenant_queue(tenant))
        topology.declare_tenant_queue(channel, tenant)
    messages = [outgoing(tenants[i % 3], i) for i in range(300)]
    assert publish_all(url, topology.notices_exchange, messages, window=50) == 300
    for tenant in tenants:
        names = []
        while (got := channel.basic_get(tenant_queue(tenant), auto_ack=True))[0] is not None:
            names.append(parse_notice(got[2]).vm_name)  # type: ignore[union-attr]
        assert names == [f"vm-{i}" for i in range(300) if tenants[i % 3] == tenant]
    connection.close()
    with pytest.raises(UnroutableNotice):
        publish_all(url, topology.notices_exchange, [outgoing(f"nobody{secrets.token_hex(3)}", 0)])
