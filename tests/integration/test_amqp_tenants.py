"""`evacuator tenant add|remove` on the real broker, what a provisioned tenant still cannot do, and the bounds
of the hosts' replies queues (declared by the reply consumer, also over a queue an older version declared)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest
import yaml
from structlog.testing import capture_logs

from evacuator.cli import main
from evacuator.lab.broker import LabBroker
from notifiers.errors import BrokerRefused, BrokerUnavailable
from notifiers.messages import EvacuationFailed, PostponeReply, encode
from notifiers.publisher import NoticePublisher
from notifiers.reply_acceptance import RejectedDelivery, TenantReply
from notifiers.reply_consumer import ReplyConsumer
from notifiers.settings import BrokerSettings
from notifiers.tenant import TenantClient
from notifiers.topology import REPLIES_QUEUE_BOUNDS, host_replies_queue, reply_routing_key, tenant_queue
from tests.fixtures.broker import BrokerJanitor, LabTenant, _with_credentials, refusal

pytestmark = pytest.mark.integration

VM = "0b5e1f0a-5c1e-4d2a-9a51-3f7f4c2d9e01"


def _config(tmp_path: Path, settings: BrokerSettings) -> Path:
    path = tmp_path / "evacuator.yaml"
    path.write_text(yaml.safe_dump({
        "host": {"name": "hv1"},
        "peers": [{"name": "hv2", "libvirt_uri": "qemu+tcp://hv2/system"}],
        "data_channel": {"enabled": False},  # no data channel: this host only provisions tenants
        "broker": {"url": settings.url.get_secret_value(), "notices_exchange": settings.notices_exchange,
                   "replies_exchange": settings.replies_exchange},
    }))  # fmt: skip
    return path


def test_tenant_add_makes_a_user_whose_queue_exists_at_once_and_remove_undoes_it(
    tmp_path: Path, lab_broker: LabBroker, broker_settings: BrokerSettings, broker_janitor: BrokerJanitor,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    name = f"cli-{secrets.token_hex(4)}"
    broker_janitor.queue(tenant_queue(name))
    password_file = tmp_path / "password"
    password_file.write_text("s3cret-" + secrets.token_hex(4) + "\n")
    common = [
        "--config",
        str(_config(tmp_path, broker_settings)),
        "--rabbitmqctl",
        " ".join(lab_broker.rabbitmqctl),
    ]
    assert main(["tenant", "add", name, "--password-file", str(password_file), *common]) == 0
    assert "s3cret" not in capsys.readouterr().out
    url = _with_credentials(lab_broker.url, name, password_file.read_text().strip())

    # Subscribed before any notice: the first one published lands in the queue the CLI declared.
    publisher = NoticePublisher(broker_settings)
    publisher.start(timeout_seconds=10)
    notice = EvacuationFailed(
        tenant=name, host="hv1", vm_uuid=VM, vm_name="w", reason="r", at=datetime.now(UTC)
    )
    publisher.publish(name, "hv1", notice).result(timeout=10)  # mandatory: unroutable would raise
    publisher.close()
    with TenantClient(url, name, replies_exchange=broker_settings.replies_exchange) as client:
        assert client.next_notice(5.0) == notice

    assert main(["tenant", "remove", name, *common]) == 0
    with pytest.raises(BrokerUnavailable), TenantClient(url, name) as client:
        client.next_notice(1.0)


def test_tenant_add_prints_a_generated_password_once(
    tmp_path: Path, lab_broker: LabBroker, broker_settings: BrokerSettings, broker_janitor: BrokerJanitor,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    name = f"gen-{secrets.token_hex(4)}"
    broker_janitor.queue(tenant_queue(name))
    common = [
        "--config",
        str(_config(tmp_path, broker_settings)),
        "--rabbitmqctl",
        " ".join(lab_broker.rabbitmqctl),
    ]
    assert main(["tenant", "add", name, *common]) == 0
    password = capsys.readouterr().out.split("password: ", 1)[1].strip()
    with TenantClient(_with_credentials(lab_broker.url, name, password), name) as client:
        assert client.next_notice(0.2) is None
    assert main(["tenant", "remove", name, *common]) == 0


@pytest.fixture(scope="module")
def pair(
    make_tenant: Callable[[str], LabTenant], broker_settings: BrokerSettings
) -> tuple[LabTenant, LabTenant]:
    acme, bravo = make_tenant("iso-a"), make_tenant("iso-b")
    publisher = NoticePublisher(broker_settings)
    publisher.start(timeout_seconds=10)
    for tenant in (acme, bravo):
        publisher.ensure_tenant_queue(tenant.name).result(timeout=10)
    publisher.close()
    return acme, bravo


@pytest.mark.parametrize(
    "operation",
    ["basic_get_other_queue", "bind_other_queue", "bind_new_queue_on_other_keys", "delete_other_queue",
     "purge_other_queue", "postpone_for_other_tenant", "declare_exchange"],
)  # fmt: skip
def test_tenant_cannot_touch_another_tenants_notices_or_speak_for_it(
    pair: tuple[LabTenant, LabTenant], broker_settings: BrokerSettings, operation: str
) -> None:
    acme, bravo = pair
    victim_queue, notices = tenant_queue(acme.name), broker_settings.notices_exchange
    forged = encode(PostponeReply(vm_uuid=VM, postpone_seconds=600))
    actions: dict[str, Callable[[Any], object]] = {
        "basic_get_other_queue": lambda ch: ch.basic_get(victim_queue),
        "bind_other_queue": lambda ch: ch.queue_bind(victim_queue, notices, routing_key=f"{bravo.name}.#"),
        "bind_new_queue_on_other_keys": lambda ch: ch.queue_bind(
            tenant_queue(bravo.name), notices, routing_key="#"
        ),
        "delete_other_queue": lambda ch: ch.queue_delete(victim_queue),
        "purge_other_queue": lambda ch: ch.queue_purge(victim_queue),
        "postpone_for_other_tenant": lambda ch: ch.basic_publish(
            broker_settings.replies_exchange, reply_routing_key(acme.name, "hv1"), forged,
            pika.BasicProperties(user_id=bravo.name),
        ),
        "declare_exchange": lambda ch: ch.exchange_declare(f"{bravo.name}.x", "fanout"),
    }  # fmt: skip
    assert refusal(bravo.url, actions[operation]) == 403


def test_tenant_client_reports_a_refused_consume_of_another_queue(
    pair: tuple[LabTenant, LabTenant], broker_settings: BrokerSettings
) -> None:
    acme, bravo = pair
    spoof = LabTenant(name=bravo.name, url=bravo.url)
    with TenantClient(spoof.url, spoof.name) as client:
        client._tenant = acme.name  # as if it asked for acme's queue: the broker, not the client, refuses
        with pytest.raises(BrokerRefused) as caught:
            client.next_notice(1.0)
    assert caught.value.reply_code == 403


# --- The hosts' replies queues: bounded, and an older unbounded one still consumed -------------------------


def _declare(url: str, queue: str, arguments: Mapping[str, object]) -> int:
    """0 if `queue` could be declared with exactly `arguments`, else the code the broker refused it with."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        connection.channel().queue_declare(queue=queue, durable=True, arguments=arguments)
        return 0
    except pika.exceptions.ChannelClosedByBroker as exc:
        return int(exc.reply_code)
    finally:
        if connection.is_open:
            connection.close()


class _Received:
    def __init__(self) -> None:
        self.replies: list[TenantReply] = []
        self.rejected: list[RejectedDelivery] = []


def _consumer(settings: BrokerSettings, host: str, received: _Received) -> ReplyConsumer:
    return ReplyConsumer(settings, host=host, on_reply=received.replies.append,
                         on_rejected=received.rejected.append)  # fmt: skip


def _wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not within {seconds} s"
        time.sleep(0.05)


def test_the_reply_consumer_declares_its_queue_bounded_with_reject_publish(
    broker_settings: BrokerSettings, broker_janitor: BrokerJanitor, lab_broker: LabBroker
) -> None:
    host = f"hv-{secrets.token_hex(3)}"
    queue = broker_janitor.queue(host_replies_queue(host, replies_exchange=broker_settings.replies_exchange))
    consumer = _consumer(broker_settings, host, _Received())
    consumer.start(timeout_seconds=10)
    consumer.close()
    quorum: dict[str, object] = {"x-queue-type": broker_settings.queue_type}
    # The broker compares a declare's arguments with the queue's: equal only with the bounds, all of them.
    assert _declare(lab_broker.url, queue, {**quorum, **REPLIES_QUEUE_BOUNDS}) == 0
    assert _declare(lab_broker.url, queue, quorum) == 406
    dropping = {**quorum, **REPLIES_QUEUE_BOUNDS, "x-overflow": "drop-head"}
    assert _declare(lab_broker.url, queue, dropping) == 406


def test_a_replies_queue_an_older_version_declared_unbounded_is_still_consumed_with_a_warning(
    broker_settings: BrokerSettings, broker_janitor: BrokerJanitor, lab_broker: LabBroker,
    make_tenant: Callable[[str], LabTenant],
) -> None:  # fmt: skip
    acme, host = make_tenant("old"), f"hv-{secrets.token_hex(3)}"
    queue = broker_janitor.queue(host_replies_queue(host, replies_exchange=broker_settings.replies_exchange))
    assert _declare(lab_broker.url, queue, {"x-queue-type": broker_settings.queue_type}) == 0  # as before
    received = _Received()
    consumer = _consumer(broker_settings, host, received)
    with capture_logs() as logs:
        consumer.start(timeout_seconds=10)
    try:
        [warning] = [e for e in logs if e["event"] == "replies_queue_unbounded"]
        assert (warning["queue"], warning["log_level"]) == (queue, "warning")
        assert "x-max-length" in warning["detail"] and "delete the queue" in warning["action"]
        with TenantClient(acme.url, acme.name, replies_exchange=broker_settings.replies_exchange) as tenant:
            tenant.send_postpone(host, VM, 60)  # mandatory: no binding would raise
        _wait_for(lambda: len(received.replies) == 1)
        assert received.replies[0].tenant == acme.name
    finally:
        consumer.close()
