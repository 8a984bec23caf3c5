"""`evacuator tenant add|remove` on the real broker, and what a provisioned tenant still cannot do."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest
import yaml

from evacuator.cli import main
from evacuator.lab.broker import LabBroker
from notifiers.errors import BrokerRefused, BrokerUnavailable
from notifiers.messages import EvacuationFailed, PostponeReply, encode
from notifiers.publisher import NoticePublisher
from notifiers.settings import BrokerSettings
from notifiers.tenant import TenantClient
from notifiers.topology import reply_routing_key, tenant_queue
from tests.fixtures.broker import BrokerJanitor, LabTenant, _with_credentials, refusal

pytestmark = pytest.mark.integration

VM = "0b5e1f0a-5c1e-4d2a-9a51-3f7f4c2d9e01"


def _config(tmp_path: Path, settings: BrokerSettings) -> Path:
    path = tmp_path / "evacuator.yaml"
    path.write_text(yaml.safe_dump({
        "host": {"name": "hv1"},
        "peers": [{"name": "hv2", "libvirt_uri": "qemu+tcp://hv2/system"}],
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
