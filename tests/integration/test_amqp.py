"""Tenant contract on a real broker: notices reach only their tenant, forged replies are refused."""

from __future__ import annotations

import contextlib
import json
import queue
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pika
import pika.exceptions
import pytest

from notifiers.errors import BrokerRefused, InvalidName, UnroutableNotice
from notifiers.messages import (
    EvacuationScheduled,
    PostponeReply,
    Reason,
    RegisterReply,
    ScheduledVm,
    VmEvacuated,
)
from notifiers.publisher import NoticePublisher
from notifiers.reply_acceptance import RejectedDelivery, TenantReply
from notifiers.reply_consumer import ReplyConsumer
from notifiers.settings import BrokerSettings
from notifiers.tenant import TenantClient
from notifiers.topology import host_replies_queue, notice_routing_key, reply_routing_key, tenant_queue
from tests.fixtures.broker import BrokerJanitor, LabTenant, refusal

pytestmark = pytest.mark.integration

VM = "0b5e1f0a-5c1e-4d2a-9a51-3f7f4c2d9e01"
WAIT_SECONDS = 5.0


@pytest.fixture(scope="module")
def tenants(make_tenant: Callable[[str], LabTenant]) -> tuple[LabTenant, LabTenant]:
    return make_tenant("acme"), make_tenant("bravo")


@pytest.fixture
def acme(tenants: tuple[LabTenant, LabTenant]) -> LabTenant:
    return tenants[0]


@pytest.fixture
def bravo(tenants: tuple[LabTenant, LabTenant]) -> LabTenant:
    return tenants[1]


@pytest.fixture
def host(broker_janitor: BrokerJanitor, broker_settings: BrokerSettings) -> str:
    name = f"hv-{secrets.token_hex(3)}"
    broker_janitor.queue(host_replies_queue(name, replies_exchange=broker_settings.replies_exchange))
    return name


@pytest.fixture
def publisher(
    broker_settings: BrokerSettings, tenants: tuple[LabTenant, LabTenant], broker_janitor: BrokerJanitor
) -> Iterator[NoticePublisher]:
    publisher = NoticePublisher(broker_settings)
    publisher.start(timeout_seconds=WAIT_SECONDS)
    for tenant in tenants:
        publisher.ensure_tenant_queue(tenant.name).result(timeout=WAIT_SECONDS)
        broker_janitor.purge(tenant_queue(tenant.name))
    yield publisher
    publisher.close()


class Inbox:
    """What the consumer handed to the service, as queues the test can wait on."""

    def __init__(self) -> None:
        self.replies: queue.Queue[TenantReply] = queue.Queue()
        self.rejected: queue.Queue[RejectedDelivery] = queue.Queue()


@pytest.fixture
def inbox(broker_settings: BrokerSettings, host: str) -> Iterator[Inbox]:
    inbox = Inbox()
    consumer = ReplyConsumer(
        broker_settings, host=host, on_reply=inbox.replies.put, on_rejected=inbox.rejected.put
    )
    consumer.start(timeout_seconds=WAIT_SECONDS)
    yield inbox
    consumer.close()


def client(tenant: LabTenant, settings: BrokerSettings) -> TenantClient:
    return TenantClient(tenant.url, tenant.name, replies_exchange=settings.replies_exchange)


def scheduled(tenant: LabTenant, host: str, settings: BrokerSettings) -> EvacuationScheduled:
    return EvacuationScheduled(
        host=host,
        tenant=tenant.name,
        severity="severe",
        reasons=(
            Reason(
                source="hwmon",
                sensor="coretemp/temp1",
                value=97.0,
                threshold=90.0,
                unit="celsius",
                message="hot",
            ),
        ),
        vms=(ScheduledVm(vm_uuid=VM, vm_name="web-1", deadline=datetime.now(UTC) + timedelta(minutes=10)),),
        reply_exchange=settings.replies_exchange,
        reply_routing_key=reply_routing_key(tenant.name, host),
    )


def publish_raw(channel: Any, exchange: str, routing_key: str, body: bytes, user_id: str | None) -> None:
    properties = pika.BasicProperties(content_type="application/json", user_id=user_id)
    channel.basic_publish(exchange=exchange, routing_key=routing_key, body=body, properties=properties)


def test_tenant_receives_the_notice_published_for_it_and_no_one_else_does(
    publisher: NoticePublisher,
    broker_settings: BrokerSettings,
    acme: LabTenant,
    bravo: LabTenant,
    host: str,
    request: pytest.FixtureRequest,
) -> None:
    notice = scheduled(acme, host, broker_settings)
    before = datetime.now(UTC)
    started = time.perf_counter()
    confirmed_at = publisher.publish(acme.name, host, notice).result(timeout=WAIT_SECONDS)
    confirm_ms = (time.perf_counter() - started) * 1000
    request.node.user_properties.append(("publish_to_confirm_ms", round(confirm_ms, 2)))
    assert before <= confirmed_at <= datetime.now(UTC)
    assert confirm_ms < 1000
    with client(acme, broker_settings) as mine, client(bravo, broker_settings) as theirs:
        assert mine.next_notice(WAIT_SECONDS) == notice
        assert mine.next_notice(0.2) is None
        assert theirs.next_notice(0.2) is None


def test_a_notice_type_a_newer_service_added_is_skipped_and_the_next_one_read(
    publisher: NoticePublisher, broker_settings: BrokerSettings, acme: LabTenant, host: str
) -> None:
    """Within schema 1 a newer service may add a notice type: this client acks it, skips it and goes on."""
    newer = {"schema_version": 1, "type": "host_recovered", "event_id": str(uuid.uuid4()),
             "tenant": acme.name, "host": host, "at": datetime.now(UTC).isoformat()}  # fmt: skip
    url = broker_settings.url.get_secret_value()
    with contextlib.closing(pika.BlockingConnection(pika.URLParameters(url))) as connection:
        publish_raw(connection.channel(), broker_settings.notices_exchange,
                    notice_routing_key(acme.name, host, "host_recovered"), json.dumps(newer).encode(),
                    user_id=pika.URLParameters(url).credentials.username)  # fmt: skip
    notice = scheduled(acme, host, broker_settings)
    publisher.publish(acme.name, host, notice).result(timeout=WAIT_SECONDS)
    with client(acme, broker_settings) as mine:
        assert mine.next_notice(WAIT_SECONDS) == notice
        assert mine.next_notice(0.2) is None


def test_notice_for_a_tenant_without_a_queue_fails_as_unroutable(
    publisher: NoticePublisher, host: str
) -> None:
    ghost = f"ghost-{secrets.token_hex(3)}"
    notice = VmEvacuated(
        tenant=ghost, host=host, vm_uuid=VM, vm_name="web-1", from_host=host, to_host="hv-b",
        at=datetime.now(UTC),
    )  # fmt: skip
    with pytest.raises(UnroutableNotice):
        publisher.publish(ghost, host, notice).result(timeout=WAIT_SECONDS)


def test_ready_reply_from_the_owner_reaches_the_service_as_that_tenant(
    inbox: Inbox, broker_settings: BrokerSettings, acme: LabTenant, host: str
) -> None:
    event_id = "6c0a2f4e-0d5b-4b7e-8f3a-2b1c9d8e7f60"
    with client(acme, broker_settings) as tenant:
        tenant.send_ready(host, VM, event_id)
    reply = inbox.replies.get(timeout=WAIT_SECONDS)
    assert (reply.tenant, reply.host, reply.reply.vm_uuid, reply.reply.event_id) == (
        acme.name,
        host,
        VM,
        event_id,
    )


@pytest.mark.parametrize("kind", ["postpone", "register"])
def test_postpone_and_register_replies_reach_the_service_as_that_tenant(
    inbox: Inbox, broker_settings: BrokerSettings, acme: LabTenant, host: str, kind: str
) -> None:
    with client(acme, broker_settings) as tenant:
        if kind == "postpone":
            tenant.send_postpone(host, VM, 300)
        else:
            tenant.send_register(host, VM, 900)
    reply = inbox.replies.get(timeout=WAIT_SECONDS)
    assert (reply.tenant, reply.reply.type, reply.reply.vm_uuid) == (acme.name, kind, VM)
    assert reply.reply == (
        PostponeReply(vm_uuid=VM, postpone_seconds=300) if kind == "postpone"
        else RegisterReply(vm_uuid=VM, window_seconds=900)
    )  # fmt: skip


def test_reply_under_another_tenants_routing_key_is_refused_by_the_broker(
    inbox: Inbox, broker_settings: BrokerSettings, acme: LabTenant, bravo: LabTenant, host: str
) -> None:
    exchange, forged_key = broker_settings.replies_exchange, reply_routing_key(acme.name, host)
    code = refusal(bravo.url, lambda ch: publish_raw(ch, exchange, forged_key, b"{}", user_id=bravo.name))
    assert code == 403  # ACCESS_REFUSED: topic permissions pin bravo to `bravo.<host>`


@pytest.mark.parametrize("own_key", [True, False], ids=["own_routing_key", "victims_routing_key"])
def test_reply_with_a_forged_user_id_is_refused_by_the_broker(
    inbox: Inbox, broker_settings: BrokerSettings, acme: LabTenant, bravo: LabTenant, host: str, own_key: bool
) -> None:
    key = reply_routing_key(bravo.name if own_key else acme.name, host)
    exchange = broker_settings.replies_exchange
    code = refusal(bravo.url, lambda ch: publish_raw(ch, exchange, key, b"{}", user_id=acme.name))
    assert code in ((406,) if own_key else (403, 406))


def test_reply_without_user_id_is_rejected_by_the_consumer_which_keeps_serving(
    inbox: Inbox, broker_settings: BrokerSettings, acme: LabTenant, host: str
) -> None:
    body = b'{"schema_version": 1, "type": "ready", "vm_uuid": "%s"}' % VM.encode()
    connection = pika.BlockingConnection(pika.URLParameters(acme.url))
    channel = connection.channel()
    channel.confirm_delivery()
    key = reply_routing_key(acme.name, host)
    publish_raw(channel, broker_settings.replies_exchange, key, body, user_id=None)
    publish_raw(channel, broker_settings.replies_exchange, key, b"not json", user_id=acme.name)
    publish_raw(channel, broker_settings.replies_exchange, key, body, user_id=acme.name)
    connection.close()
    first, second = inbox.rejected.get(timeout=WAIT_SECONDS), inbox.rejected.get(timeout=WAIT_SECONDS)
    assert "missing user_id" in first.reason
    assert "not UTF-8 JSON" in second.reason
    assert inbox.replies.get(timeout=WAIT_SECONDS).tenant == acme.name
    assert inbox.replies.empty()


@pytest.mark.parametrize(
    "operation",
    [
        "consume_other_queue",
        "declare_queue",
        "bind_own_queue_to_other_keys",
        "publish_notice",
        "read_replies",
        "publish_via_default_exchange",
    ],
)
def test_tenant_cannot_reach_beyond_its_own_queue_and_replies(
    publisher: NoticePublisher,
    inbox: Inbox,
    broker_settings: BrokerSettings,
    acme: LabTenant,
    bravo: LabTenant,
    host: str,
    operation: str,
) -> None:
    actions: dict[str, Callable[[Any], object]] = {
        "consume_other_queue": lambda ch: ch.basic_consume(tenant_queue(acme.name), lambda *_: None),
        "declare_queue": lambda ch: ch.queue_declare(f"{bravo.name}.spy", durable=True),
        "bind_own_queue_to_other_keys": lambda ch: ch.queue_bind(
            tenant_queue(bravo.name), broker_settings.notices_exchange, routing_key=f"{acme.name}.#"
        ),
        "publish_notice": lambda ch: publish_raw(
            ch, broker_settings.notices_exchange, f"{acme.name}.{host}.vm_evacuated", b"{}", bravo.name
        ),
        "read_replies": lambda ch: ch.basic_get(
            host_replies_queue(host, replies_exchange=broker_settings.replies_exchange)
        ),
        # The default exchange routes by queue name: it would bypass the topic permissions on the replies.
        "publish_via_default_exchange": lambda ch: publish_raw(
            ch,
            "",
            host_replies_queue(host, replies_exchange=broker_settings.replies_exchange),
            b"{}",
            bravo.name,
        ),
    }
    assert refusal(bravo.url, actions[operation]) == 403


def test_ready_reply_to_a_host_nobody_serves_is_reported_as_unroutable(
    broker_settings: BrokerSettings, acme: LabTenant
) -> None:
    with client(acme, broker_settings) as tenant, pytest.raises(BrokerRefused) as caught:
        tenant.send_ready(f"hv-{secrets.token_hex(3)}", VM)
    assert caught.value.reply_code == 312  # NO_ROUTE


def test_tenant_client_must_connect_as_its_own_user(broker_settings: BrokerSettings, acme: LabTenant) -> None:
    with pytest.raises(InvalidName, match="its own broker user"):
        TenantClient(acme.url, "bravo", replies_exchange=broker_settings.replies_exchange)
